package audiohook

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/audio"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/coder/websocket"
	"github.com/rs/zerolog"
)

// The sample key and secret of the AudioHook documentation.
const (
	testKey    = "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh"
	testSecret = "TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU="
	otherKey   = "b3RoZXItYXBpLWtleS0xMjM0"
)

// The "ahtest" processor records, per call, every frame a worker processed.
type gotFrame struct {
	h       frame.Header
	payload []byte
}

type frameLog struct {
	mu    sync.Mutex
	calls map[string][]gotFrame
	specs map[string][]string // call → leg names
	ended map[string]string
}

var processed = &frameLog{calls: map[string][]gotFrame{}, specs: map[string][]string{}, ended: map[string]string{}}

func (l *frameLog) frames(call string) []gotFrame {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]gotFrame(nil), l.calls[call]...)
}

func (l *frameLog) stopped(call string) (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.ended[call]
	return r, ok
}

// callFor finds the call of an AudioHook session id.
func callFor(session string) string { return "ah-" + session }

type recProc struct{}
type recCall struct{ id string }

func init() {
	proc.Register("ahtest", func(proc.Options) (proc.Processor, error) { return recProc{}, nil })
}

func (recProc) Start(c proc.Call) (proc.Handler, error) {
	processed.mu.Lock()
	var names []string
	for _, l := range c.Spec().Legs {
		names = append(names, l.Name)
	}
	processed.specs[c.Spec().Call] = names
	processed.mu.Unlock()
	return &recCall{c.Spec().Call}, nil
}
func (r *recCall) Frame(f *proc.Frame) {
	processed.mu.Lock()
	processed.calls[r.id] = append(processed.calls[r.id], gotFrame{f.Header, append([]byte(nil), f.Payload...)})
	processed.mu.Unlock()
}

// Paused records a frame of a pause (frame.FlagPaused): a header, no audio.
func (r *recCall) Paused(h *frame.Header) {
	processed.mu.Lock()
	processed.calls[r.id] = append(processed.calls[r.id], gotFrame{*h, nil})
	processed.mu.Unlock()
}
func (r *recCall) Stop(reason string) {
	processed.mu.Lock()
	processed.ended[r.id] = reason
	processed.mu.Unlock()
}

func testLogger(t testing.TB) zerolog.Logger {
	if os.Getenv("CALLROUTER_TEST_LOG") != "" {
		return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel)
	}
	return zerolog.Nop()
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

// env is a running callrouter with the AudioHook endpoint on an HTTP test server.
type env struct {
	stack *stack.Stack
	srv   *Server
	http  *httptest.Server
	url   string // ws:// URL of the endpoint
	stop  func() error
}

func testConfig(t testing.TB) Config {
	cfg := DefaultConfig()
	secret, _ := base64.StdEncoding.DecodeString(testSecret)
	cfg.Keys = map[string]Key{testKey: {Tenant: "acme", Secret: secret}, otherKey: {Tenant: "globex", Secret: []byte("0123456789abcdef0123")}}
	cfg.FailDelay = 100 * time.Millisecond
	cfg.DrainTimeout = 2 * time.Second
	return cfg
}

type envOpts struct {
	workers    int
	processors []string
	place      time.Duration // ingest place timeout (0: default)
	idle       time.Duration // worker idle timeout (0: default)
	capacity   int           // worker capacity (0: default)
}

func startEnv(t testing.TB, cfg Config, o envOpts) *env {
	t.Helper()
	wc := worker.DefaultConfig()
	wc.Processors = append([]string{"accounting", "ahtest"}, o.processors...)
	wc.LagThreshold = time.Minute
	wc.MaxFrameAge = time.Minute
	if o.idle > 0 {
		wc.IdleTimeout = o.idle
	}
	if o.capacity > 0 {
		wc.Capacity = o.capacity
	}
	ic := ingest.DefaultConfig()
	if o.place > 0 {
		ic.PlaceTimeout, ic.PlaceAttempts = o.place, 1
	}
	s, err := stack.Start(stack.Config{Workers: o.workers, Worker: wc, Ingest: ic, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(cfg, Deps{Log: testLogger(t), Registry: s.Registry()})
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
	e := &env{stack: s, srv: srv, http: hs, url: "ws" + strings.TrimPrefix(hs.URL, "http") + cfg.Path, stop: stop}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("audiohook Run: %v", err)
		}
		hs.Close()
		if err := s.Close(); err != nil {
			t.Logf("stack close: %v", err)
		}
	})
	<-srv.Ready()
	if o.workers > 0 {
		eventually(t, 10*time.Second, "workers visible to the router", func() bool { return len(s.Routers[0].Workers()) == o.workers })
	}
	return e
}

// tone writes n samples of the sum of sines (Hz) at amplitude a (of full scale) as μ-law.
func tone(n int, a float64, hz ...float64) []byte {
	out := make([]byte, n)
	for i := range out {
		var v float64
		for _, f := range hz {
			v += math.Sin(2 * math.Pi * f * float64(i) / 8000)
		}
		out[i] = audio.EncodeMuLaw(int16(a * 32767 * v / float64(len(hz))))
	}
	return out
}

// dtmfTones returns μ-law audio of the digits (100 ms tone, 100 ms pause each) padded to n samples.
func dtmfTones(n int, digits string) []byte {
	low := map[byte]float64{'1': 697, '2': 697, '3': 697, '4': 770, '5': 770, '6': 770, '7': 852, '8': 852, '9': 852, '0': 941}
	high := map[byte]float64{'1': 1209, '2': 1336, '3': 1477, '4': 1209, '5': 1336, '6': 1477, '7': 1209, '8': 1336, '9': 1477, '0': 1336}
	out := tone(n, 0, 0)
	pos := 4000
	for i := 0; i < len(digits); i++ {
		copy(out[pos:], tone(800, 0.3, low[digits[i]], high[digits[i]]))
		pos += 2400
	}
	return out
}

// client is a Go AudioHook client speaking the protocol as PROTOCOL-NOTES.md records the
// reference client doing it.
type client struct {
	t      testing.TB
	conn   *websocket.Conn
	id     string
	org    string
	seq    int64
	server int64
	resp   *http.Response
}

type signOpts struct {
	key, secret string
	nonce       string
	created     time.Time
	org         string
	omit        string // a covered component left out of the signature
}

func newUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// sign adds the reference client's upgrade headers and signature to h for url.
func sign(h http.Header, host, path string, o signOpts) {
	h.Set("X-API-KEY", o.key)
	h.Set("Audiohook-Organization-Id", o.org)
	h.Set("Audiohook-Correlation-Id", newUUID())
	if o.secret == "" {
		return
	}
	if o.nonce == "" {
		b := make([]byte, 18)
		_, _ = rand.Read(b)
		o.nonce = base64.StdEncoding.EncodeToString(b)
	}
	if o.created.IsZero() {
		o.created = time.Now()
	}
	comps := []string{"@request-target", "@authority", "audiohook-organization-id", "audiohook-session-id", "audiohook-correlation-id", "x-api-key"}
	vals := map[string]string{"@request-target": path, "@authority": host, "audiohook-organization-id": o.org,
		"audiohook-session-id": h.Get("Audiohook-Session-Id"), "audiohook-correlation-id": h.Get("Audiohook-Correlation-Id"), "x-api-key": o.key}
	var covered []string
	for _, c := range comps {
		if c != o.omit {
			covered = append(covered, c)
		}
	}
	params := "("
	for i, c := range covered {
		if i > 0 {
			params += " "
		}
		params += `"` + c + `"`
	}
	params += fmt.Sprintf(`);keyid="%s";nonce="%s";alg="hmac-sha256";created=%d;expires=%d`, o.key, o.nonce, o.created.Unix(), o.created.Unix()+30)
	var base strings.Builder
	for _, c := range covered {
		fmt.Fprintf(&base, "%q: %s\n", c, vals[c])
	}
	base.WriteString(`"@signature-params": ` + params)
	secret, _ := base64.StdEncoding.DecodeString(o.secret)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(base.String()))
	h.Set("Signature-Input", "sig1="+params)
	h.Set("Signature", "sig1=:"+base64.StdEncoding.EncodeToString(mac.Sum(nil))+":")
}

// dial upgrades with o; err carries the HTTP refusal.
func (e *env) dial(t testing.TB, o signOpts) (*client, error) {
	t.Helper()
	if o.key == "" {
		o.key, o.secret = testKey, testSecret
	}
	if o.org == "" {
		o.org = newUUID()
	}
	c := &client{t: t, id: newUUID(), org: o.org}
	h := http.Header{}
	h.Set("Audiohook-Session-Id", c.id)
	host := strings.TrimPrefix(e.http.URL, "http://")
	sign(h, host, DefaultConfig().Path, o)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, e.url, &websocket.DialOptions{HTTPHeader: h})
	c.resp = resp
	if err != nil {
		return c, err
	}
	conn.SetReadLimit(1 << 20)
	c.conn = conn
	t.Cleanup(func() { _ = conn.CloseNow() })
	return c, nil
}

func (c *client) sendMsg(typ string, params any, position time.Duration) {
	c.t.Helper()
	c.seq++
	c.sendRaw(map[string]any{"version": "2", "type": typ, "id": c.id, "seq": c.seq, "serverseq": c.server,
		"position": formatDuration(position), "parameters": params})
}

func (c *client) sendRaw(m any) {
	c.t.Helper()
	b, _ := json.Marshal(m)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, b); err != nil {
		c.t.Fatalf("write %s: %v", b, err)
	}
}

func (c *client) audio(b []byte) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageBinary, b); err != nil {
		c.t.Fatalf("write audio: %v", err)
	}
}

// recv reads the next server message and checks the common rules: version, id, seq.
func (c *client) recv() serverMsgIn {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	typ, b, err := c.conn.Read(ctx)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	if typ != websocket.MessageText {
		c.t.Fatalf("server sent a binary message")
	}
	var m serverMsgIn
	if err := json.Unmarshal(b, &m); err != nil {
		c.t.Fatalf("server message %s: %v", b, err)
	}
	if m.Version != "2" || m.ID != c.id || m.Seq != c.server+1 {
		c.t.Fatalf("server message %s: want version 2, id %s, seq %d", b, c.id, c.server+1)
	}
	c.server = m.Seq
	return m
}

// expect reads the next message and checks its type (and clientseq when >= 0).
func (c *client) expect(typ string, clientSeq int64) serverMsgIn {
	c.t.Helper()
	m := c.recv()
	if m.Type != typ || clientSeq >= 0 && m.ClientSeq != clientSeq {
		c.t.Fatalf("got %s (clientseq %d) %s, want %s (clientseq %d)", m.Type, m.ClientSeq, m.Parameters, typ, clientSeq)
	}
	return m
}

type serverMsgIn struct {
	Version    string          `json:"version"`
	ID         string          `json:"id"`
	Type       string          `json:"type"`
	Seq        int64           `json:"seq"`
	ClientSeq  int64           `json:"clientseq"`
	Parameters json.RawMessage `json:"parameters"`
}

var stereoPCMU = map[string]any{"type": "audio", "format": "PCMU", "channels": []string{"external", "internal"}, "rate": 8000}

func (c *client) open(media ...map[string]any) serverMsgIn {
	c.t.Helper()
	if len(media) == 0 {
		media = []map[string]any{stereoPCMU}
	}
	c.sendMsg("open", map[string]any{"organizationId": c.org, "conversationId": newUUID(),
		"participant": map[string]any{"id": newUUID(), "ani": "+1-555-555-1234", "aniName": "John Doe", "dnis": "+1-800-555-6789"},
		"media":       media}, 0)
	return c.recv()
}

// closeSession sends close and expects closed, then closes the WebSocket as the client does.
func (c *client) closeSession(pos time.Duration) {
	c.t.Helper()
	c.sendMsg("close", map[string]any{"reason": "end"}, pos)
	for {
		m := c.recv()
		if m.Type == "closed" {
			if m.ClientSeq != c.seq {
				c.t.Fatalf("closed clientseq %d, want %d", m.ClientSeq, c.seq)
			}
			break
		}
		if m.Type != "event" {
			c.t.Fatalf("got %s while waiting for closed", m.Type)
		}
	}
	_ = c.conn.Close(websocket.StatusNormalClosure, "")
}

// sync sends ping and waits for its pong: the server has acted on everything sent before.
func (c *client) sync(pos time.Duration) {
	c.t.Helper()
	c.sendMsg("ping", map[string]any{}, pos)
	c.expect("pong", c.seq)
}

func (c *client) mustOpen() {
	c.t.Helper()
	if m := c.open(); m.Type != "opened" {
		c.t.Fatalf("got %s %s, want opened", m.Type, m.Parameters)
	}
}
