package twilio

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/audio"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

const tokenAcme = "acme-token-0123456789abcdef"

type gotFrame struct {
	h       frame.Header
	payload []byte
}

var processed = struct {
	sync.Mutex
	calls map[string][]gotFrame
	legs  map[string][]string
	ended map[string]bool
}{calls: map[string][]gotFrame{}, legs: map[string][]string{}, ended: map[string]bool{}}

type recProc struct{}
type recCall struct{ id string }

func init() {
	proc.Register("twiliotest", func(proc.Options) (proc.Processor, error) { return recProc{}, nil })
}

func (recProc) Start(c proc.Call) (proc.Handler, error) {
	processed.Lock()
	for _, l := range c.Spec().Legs {
		processed.legs[c.Spec().Call] = append(processed.legs[c.Spec().Call], l.Name)
	}
	processed.Unlock()
	return &recCall{c.Spec().Call}, nil
}
func (r *recCall) Frame(f *proc.Frame) {
	processed.Lock()
	processed.calls[r.id] = append(processed.calls[r.id], gotFrame{f.Header, append([]byte(nil), f.Payload...)})
	processed.Unlock()
}
func (r *recCall) Stop(string) {
	processed.Lock()
	processed.ended[r.id] = true
	processed.Unlock()
}

func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type env struct {
	stack *stack.Stack
	srv   *Server
	url   string
	stop  func() error
}

func startEnv(t testing.TB, place time.Duration, tune ...func(*Config)) *env {
	t.Helper()
	wc := worker.DefaultConfig()
	wc.Processors = []string{"accounting", "twiliotest"}
	wc.LagThreshold, wc.MaxFrameAge = time.Minute, time.Minute
	ic := ingest.DefaultConfig()
	if place > 0 {
		ic.PlaceTimeout, ic.PlaceAttempts = place, 1
	}
	log := zerolog.Nop()
	if os.Getenv("CALLROUTER_TEST_LOG") != "" {
		log = zerolog.New(zerolog.NewTestWriter(t))
	}
	s, err := stack.Start(stack.Config{Worker: wc, Ingest: ic, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Tokens = map[string]string{tokenAcme: "acme"}
	cfg.DrainTimeout = time.Second
	// The tests send faster than real time, swapped pairs back to back: a window generous enough
	// that a stalled (loaded, -race) test process never releases half a pair.
	cfg.ReorderWindow = 500 * time.Millisecond
	for _, f := range tune {
		f(&cfg)
	}
	srv, err := New(cfg, Deps{Log: log, Registry: s.Registry()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv.Run(ctx, s.Ingest) }()
	mux := http.NewServeMux()
	srv.Mount(mux)
	hs := httptest.NewServer(mux)
	stop := sync.OnceValue(func() error { cancel(); return <-errc })
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("twilio Run: %v", err)
		}
		hs.Close()
		_ = s.Close()
	})
	<-srv.Ready()
	eventually(t, 10*time.Second, "the worker", func() bool { return len(s.Routers[0].Workers()) == 1 })
	return &env{stack: s, srv: srv, url: "ws" + strings.TrimPrefix(hs.URL, "http") + cfg.Path, stop: stop}
}

// twilioClient speaks Media Streams as PROTOCOLS.md documents Twilio doing it.
type twilioClient struct {
	t    testing.TB
	conn *websocket.Conn
	sid  string
	seq  int
}

func dial(t testing.TB, url string) *twilioClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.CloseNow() })
	b := make([]byte, 16)
	for i := range b {
		b[i] = byte(i*37 + int(time.Now().UnixNano()>>uint(i%8)))
	}
	return &twilioClient{t: t, conn: conn, sid: fmt.Sprintf("MZ%x", b)}
}

func (c *twilioClient) send(m map[string]any) {
	c.t.Helper()
	if m["event"] != "connected" {
		c.seq++
		m["sequenceNumber"] = strconv.Itoa(c.seq)
		m["streamSid"] = c.sid
	}
	b, _ := json.Marshal(m)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *twilioClient) start(token string, tracks ...string) {
	c.send(map[string]any{"event": "connected", "protocol": "Call", "version": "1.0.0"})
	c.send(map[string]any{"event": "start", "start": map[string]any{"streamSid": c.sid, "accountSid": "AC0123", "callSid": "CA0123",
		"tracks": tracks, "customParameters": map[string]string{"token": token, "agent": "bob"},
		"mediaFormat": map[string]any{"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
}

func (c *twilioClient) media(track string, chunk int, payload []byte) {
	c.send(map[string]any{"event": "media", "media": map[string]any{"track": track, "chunk": strconv.Itoa(chunk),
		"timestamp": strconv.Itoa((chunk - 1) * 20), "payload": base64.StdEncoding.EncodeToString(payload)}})
}

// closed waits for the server to close the WebSocket and returns the close status.
func (c *twilioClient) closed() (websocket.StatusCode, string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for {
		_, _, err := c.conn.Read(ctx)
		if err != nil {
			var ce websocket.CloseError
			if ok := asClose(err, &ce); ok {
				return ce.Code, ce.Reason
			}
			return -1, err.Error()
		}
	}
}

func asClose(err error, ce *websocket.CloseError) bool {
	code := websocket.CloseStatus(err)
	if code == -1 {
		return false
	}
	ce.Code = code
	if i := strings.Index(err.Error(), "reason = "); i >= 0 {
		ce.Reason = err.Error()[i:]
	}
	return true
}

func tone(n int, hz float64) []byte {
	out := make([]byte, n)
	for i := range out {
		out[i] = audio.EncodeMuLaw(int16(0.3 * 32767 * math.Sin(2*math.Pi*hz*float64(i)/8000)))
	}
	return out
}

// TestMediaStream: a bidirectional-style stream with both tracks: media reordered within the
// window comes out in order and byte for byte on legs caller and agent, a lost chunk is
// gap-filled, dtmf and mark become events, stop ends the call.
func TestMediaStream(t *testing.T) {
	e := startEnv(t, 0)
	events := make(chan *nats.Msg, 64)
	sub, err := e.stack.Ingest.NC().ChanSubscribe(subjects.ClassEvents+".acme.>", events)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	c := dial(t, e.url)
	c.start(tokenAcme, "inbound", "outbound")
	in, out := tone(50*160, 440), tone(50*160, 300)
	order := []int{1}            // the first chunk anchors the track's timeline
	for k := 2; k < 40; k += 2 { // then pairs swapped: 3,2,5,4,…,39,38
		order = append(order, k+1, k)
	}
	for k := 40; k <= 50; k++ {
		order = append(order, k)
	}
	for _, k := range order {
		c.media("inbound", k, in[(k-1)*160:k*160])
		if k != 45 { // lost on the outbound track
			c.media("outbound", k, out[(k-1)*160:k*160])
		}
	}
	c.send(map[string]any{"event": "dtmf", "dtmf": map[string]any{"track": "inbound_track", "digit": "7"}})
	c.send(map[string]any{"event": "mark", "mark": map[string]any{"name": "utt-42"}})
	c.send(map[string]any{"event": "stop", "stop": map[string]any{"accountSid": "AC0123", "callSid": "CA0123"}})
	if code, _ := c.closed(); code != websocket.StatusNormalClosure {
		t.Fatalf("close %v, want 1000", code)
	}
	call := subjects.Encode("tw-" + c.sid)
	eventually(t, 10*time.Second, "the worker to stop the call", func() bool { processed.Lock(); defer processed.Unlock(); return processed.ended[call] })
	processed.Lock()
	legs, frames := processed.legs[call], processed.calls[call]
	processed.Unlock()
	if strings.Join(legs, ",") != "caller,agent" {
		t.Fatalf("legs %v", legs)
	}
	var got [2][]gotFrame
	for _, f := range frames {
		if !f.h.Has(frame.FlagLast) {
			got[f.h.Leg] = append(got[f.h.Leg], f)
		}
	}
	for leg, src := range [][]byte{in, out} {
		if len(got[leg]) != 50 {
			t.Fatalf("leg %d: %d frames, want 50", leg, len(got[leg]))
		}
		for i, f := range got[leg] {
			lost := leg == 1 && i == 44
			if f.h.Has(frame.FlagGapFilled) != lost || !lost && !bytes.Equal(f.payload, src[i*160:(i+1)*160]) {
				t.Fatalf("leg %d frame %d: gap-filled %v (want %v) or audio differs", leg, i, f.h.Has(frame.FlagGapFilled), lost)
			}
		}
	}
	var dtmf, mark bool
	deadline := time.After(5 * time.Second)
	for !dtmf || !mark {
		select {
		case m := <-events:
			var ev wire.Event
			_ = json.Unmarshal(m.Data, &ev)
			var d map[string]any
			_ = json.Unmarshal(ev.Data, &d)
			dtmf = dtmf || ev.Kind == "dtmf" && d["digit"] == "7" && d["leg"] == "caller"
			mark = mark || ev.Kind == "mark" && d["name"] == "utt-42"
			if ev.Kind == "start" && strings.Contains(string(m.Data), tokenAcme) {
				t.Fatal("the token leaked into the call's metadata")
			}
		case <-deadline:
			t.Fatalf("events: dtmf %v, mark %v", dtmf, mark)
		}
	}
}

// TestRefusals: a start without a known token, in another format, or before any placement is
// possible closes the WebSocket with the matching code and places nothing.
func TestRefusals(t *testing.T) {
	e := startEnv(t, 500*time.Millisecond)
	c := dial(t, e.url)
	c.start("wrong-token-0123456789", "inbound")
	if code, _ := c.closed(); code != websocket.StatusPolicyViolation {
		t.Fatalf("unknown token: close %v, want 1008", code)
	}
	c = dial(t, e.url)
	c.send(map[string]any{"event": "start", "start": map[string]any{"streamSid": c.sid, "tracks": []string{"inbound"},
		"customParameters": map[string]string{"token": tokenAcme}, "mediaFormat": map[string]any{"encoding": "audio/l16", "sampleRate": 16000, "channels": 1}}})
	if code, _ := c.closed(); code != websocket.StatusUnsupportedData {
		t.Fatalf("L16: close %v, want 1003", code)
	}
	c = dial(t, e.url)
	c.media("inbound", 1, make([]byte, 160))
	if code, _ := c.closed(); code != websocket.StatusPolicyViolation {
		t.Fatalf("media before start: close %v, want 1008", code)
	}
	e.stack.Stop(e.stack.Workers[0])
	eventually(t, 15*time.Second, "the router to forget the worker", func() bool { return len(e.stack.Routers[0].Workers()) == 0 })
	c = dial(t, e.url)
	c.start(tokenAcme, "inbound")
	if code, reason := c.closed(); code != websocket.StatusTryAgainLater || !strings.Contains(reason, "retry after") {
		t.Fatalf("refused placement: close %v %q, want 1013 with retry after", code, reason)
	}
	eventually(t, 5*time.Second, "no slot held", func() bool { return e.srv.Sessions() == 0 })
}

// TestDrain: once Run's context ends, upgrades get 503 and a stream still up is closed with 1001
// after the drain timeout.
func TestDrain(t *testing.T) {
	e := startEnv(t, 0)
	c := dial(t, e.url)
	c.start(tokenAcme, "inbound")
	c.media("inbound", 1, make([]byte, 160))
	eventually(t, 5*time.Second, "the call", func() bool { return len(e.stack.Ingest.Calls()) == 1 })
	stopped := make(chan error, 1)
	go func() { stopped <- e.stop() }()
	eventually(t, 5*time.Second, "upgrades refused", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, resp, err := websocket.Dial(ctx, e.url, nil)
		if err == nil {
			_ = conn.CloseNow()
			return false
		}
		return resp != nil && resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != ""
	})
	if code, _ := c.closed(); code != websocket.StatusGoingAway {
		t.Fatalf("close %v, want 1001", code)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return")
	}
	eventually(t, 5*time.Second, "the call ended", func() bool { return len(e.stack.Ingest.Calls()) == 0 })
}

// TestUpgradeRate: the upgrade carries no credential, so one address is bounded before anything
// else: past its burst it gets 429 with Retry-After.
func TestUpgradeRate(t *testing.T) {
	e := startEnv(t, 0, func(c *Config) { c.UpgradeRate, c.UpgradeBurst = 0.01, 2 })
	dial(t, e.url)
	dial(t, e.url)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, e.url, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("third upgrade: %v %+v, want 429", err, resp)
	}
}

// TestStreamBounds: past -twilio-max-sessions an upgrade gets 503 with Retry-After; past
// -twilio-max-sessions-per-tenant a start is closed with 1013, and its slot given back.
func TestStreamBounds(t *testing.T) {
	e := startEnv(t, 0, func(c *Config) {
		c.MaxSessions, c.MaxSessionsPerTenant = 2, 1
		c.Tokens["globex-token-0123456789abcdef"] = "globex"
	})
	first := dial(t, e.url)
	first.start(tokenAcme, "inbound")
	first.media("inbound", 1, make([]byte, 160))
	eventually(t, 5*time.Second, "the first call", func() bool { return len(e.stack.Ingest.Calls()) == 1 })
	second := dial(t, e.url)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, e.url, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("third upgrade: %v %+v, want 503 with Retry-After", err, resp)
	}
	second.start(tokenAcme, "inbound")
	if code, _ := second.closed(); code != websocket.StatusTryAgainLater {
		t.Fatalf("acme's second start: close %v, want 1013", code)
	}
	eventually(t, 5*time.Second, "the refused stream's slot", func() bool { return e.srv.Sessions() == 1 })
	third := dial(t, e.url)
	third.start("globex-token-0123456789abcdef", "inbound")
	third.media("inbound", 1, make([]byte, 160))
	eventually(t, 5*time.Second, "globex's call", func() bool { return len(e.stack.Ingest.Calls()) == 2 })
}

// TestPlaceTimeout: with a router that takes placement requests and never answers, placing a
// stream's call gives up after -twilio-place-timeout (not after ingest's own 30 s request
// timeout here) and closes 1013.
func TestPlaceTimeout(t *testing.T) {
	e := startEnv(t, 30*time.Second, func(c *Config) { c.PlaceTimeout = 300 * time.Millisecond })
	for _, r := range e.stack.Routers {
		e.stack.Stop(r)
	}
	nc, err := e.stack.Connect("router", "", "mute")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Subscribe(subjects.Place, func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	c := dial(t, e.url)
	begin := time.Now()
	c.start(tokenAcme, "inbound")
	code, reason := c.closed()
	if took := time.Since(begin); code != websocket.StatusTryAgainLater || !strings.Contains(reason, "retry after") || took > 15*time.Second {
		t.Fatalf("unplaced start: close %v %q after %v, want 1013 with retry after well before 30s", code, reason, took)
	}
	eventually(t, 5*time.Second, "no slot held", func() bool { return e.srv.Sessions() == 0 })
}

func TestPlaceTimeoutValidated(t *testing.T) {
	c := DefaultConfig()
	c.Tokens = map[string]string{tokenAcme: "acme"}
	c.PlaceTimeout = 0
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "-twilio-place-timeout") {
		t.Fatalf("Validate: %v, want an error naming -twilio-place-timeout", err)
	}
}
