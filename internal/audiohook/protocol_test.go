package audiohook

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

// TestUpgradeAuth: only a fresh signature by the key's secret over every required component, with
// a long enough nonce never seen before, gets in; every refusal is 401 and takes the fail delay.
func TestUpgradeAuth(t *testing.T) {
	cfg := testConfig(t)
	e := startEnv(t, cfg, envOpts{workers: 1})
	nonce := "AAAAAAAAAAAAAAAAAAAAAAAAreplay"
	if c, err := e.dial(t, signOpts{nonce: nonce}); err != nil {
		t.Fatalf("good signature refused: %v", err)
	} else {
		_ = c.conn.CloseNow()
	}
	for _, tc := range []struct {
		name string
		o    signOpts
	}{
		{"replayed nonce", signOpts{nonce: nonce}},
		{"wrong secret", signOpts{key: testKey, secret: "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA=="}},
		{"unknown key", signOpts{key: "dW5rbm93bi1rZXktMTIzNDU2", secret: testSecret}},
		{"unsigned", signOpts{key: testKey}},
		{"too old", signOpts{created: time.Now().Add(-20 * time.Second)}},
		{"from the future", signOpts{created: time.Now().Add(10 * time.Second)}},
		{"short nonce", signOpts{nonce: "short-nonce"}},
		{"session id not covered", signOpts{omit: "audiohook-session-id"}},
		{"authority not covered", signOpts{omit: "@authority"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			_, err := e.dial(t, tc.o)
			if err == nil {
				t.Fatal("upgrade accepted")
			}
			if took := time.Since(start); took < cfg.FailDelay {
				t.Fatalf("refused after %v, before the fail delay %v", took, cfg.FailDelay)
			}
		})
	}
	// The refusal is a plain 401.
	req, _ := http.NewRequest(http.MethodGet, e.http.URL+cfg.Path, nil)
	sign(req.Header, strings.TrimPrefix(e.http.URL, "http://"), cfg.Path, signOpts{key: testKey, secret: "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA==", org: newUUID()})
	req.Header.Set("Audiohook-Session-Id", newUUID())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("status %d, want 401", resp.StatusCode)
	}
}

func disconnectOf(t *testing.T, m serverMsgIn) disconnectParams {
	t.Helper()
	if m.Type != "disconnect" {
		t.Fatalf("got %s %s, want disconnect", m.Type, m.Parameters)
	}
	var p disconnectParams
	_ = json.Unmarshal(m.Parameters, &p)
	return p
}

// TestSequenceRules: a client message whose seq is not the last + 1, whose serverseq is ahead of
// the server, or whose id is another session's, is a protocol error: disconnect (error), and the
// client's close still gets closed.
func TestSequenceRules(t *testing.T) {
	e := startEnv(t, testConfig(t), envOpts{workers: 1})
	for _, tc := range []struct {
		name string
		msg  func(c *client) map[string]any
	}{
		{"seq skipped", func(c *client) map[string]any {
			return map[string]any{"version": "2", "type": "ping", "id": c.id, "seq": c.seq + 2, "serverseq": c.server, "position": "PT0S", "parameters": map[string]any{}}
		}},
		{"serverseq ahead", func(c *client) map[string]any {
			return map[string]any{"version": "2", "type": "ping", "id": c.id, "seq": c.seq + 1, "serverseq": c.server + 5, "position": "PT0S", "parameters": map[string]any{}}
		}},
		{"other id", func(c *client) map[string]any {
			return map[string]any{"version": "2", "type": "ping", "id": newUUID(), "seq": c.seq + 1, "serverseq": c.server, "position": "PT0S", "parameters": map[string]any{}}
		}},
		{"version 1", func(c *client) map[string]any {
			return map[string]any{"version": "1", "type": "ping", "id": c.id, "seq": c.seq + 1, "serverseq": c.server, "position": "PT0S", "parameters": map[string]any{}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := e.dial(t, signOpts{})
			if err != nil {
				t.Fatal(err)
			}
			if m := c.open(); m.Type != "opened" {
				t.Fatalf("got %s", m.Type)
			}
			c.sendMsg("ping", map[string]any{}, 0)
			c.expect("pong", c.seq)
			c.sendRaw(tc.msg(c))
			if p := disconnectOf(t, c.recv()); p.Reason != "error" {
				t.Fatalf("disconnect %+v, want reason error", p)
			}
			c.seq = 2 // the server took neither the bad message nor its seq
			c.closeSession(0)
		})
	}
}

// TestOpen: the server picks at most one offered format, unaltered (the most channels, then the
// first offered); a mismatched organization is unauthorized; no usable format is an error.
func TestOpen(t *testing.T) {
	e := startEnv(t, testConfig(t), envOpts{workers: 1})
	monoExt := map[string]any{"type": "audio", "format": "PCMU", "channels": []string{"external"}, "rate": 8000}
	invL16 := map[string]any{"type": "audio", "format": "L16", "channels": []string{"internal", "external"}, "rate": 8000}
	pcma := map[string]any{"type": "audio", "format": "PCMA", "channels": []string{"external", "internal"}, "rate": 8000}
	wide := map[string]any{"type": "audio", "format": "L16", "channels": []string{"external", "internal"}, "rate": 16000}
	for _, tc := range []struct {
		name  string
		offer []map[string]any
		want  map[string]any // nil: disconnect
	}{
		{"stereo first", []map[string]any{stereoPCMU, monoExt}, stereoPCMU},
		{"most channels", []map[string]any{monoExt, invL16, stereoPCMU}, invL16},
		{"mono only", []map[string]any{pcma, monoExt}, monoExt},
		{"nothing usable", []map[string]any{pcma, wide}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := e.dial(t, signOpts{})
			if err != nil {
				t.Fatal(err)
			}
			m := c.open(tc.offer...)
			if tc.want == nil {
				if p := disconnectOf(t, m); p.Reason != "error" {
					t.Fatalf("disconnect %+v", p)
				}
				c.closeSession(0)
				return
			}
			var p struct {
				Media []json.RawMessage `json:"media"`
			}
			_ = json.Unmarshal(m.Parameters, &p)
			want, _ := json.Marshal(tc.want)
			if m.Type != "opened" || len(p.Media) != 1 || !jsonEqual(p.Media[0], want) {
				t.Fatalf("got %s %s, want opened with %s", m.Type, m.Parameters, want)
			}
			c.closeSession(0)
		})
	}
	t.Run("organization mismatch", func(t *testing.T) {
		c, err := e.dial(t, signOpts{})
		if err != nil {
			t.Fatal(err)
		}
		c.org = newUUID()
		if p := disconnectOf(t, c.open()); p.Reason != "unauthorized" {
			t.Fatalf("disconnect %+v, want unauthorized", p)
		}
		c.closeSession(0)
	})
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	_ = json.Unmarshal(a, &x)
	_ = json.Unmarshal(b, &y)
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}

// interleave returns the stereo message of two channels.
func interleave(a, b []byte) []byte {
	out := make([]byte, 0, 2*len(a))
	for i := range a {
		out = append(out, a[i], b[i])
	}
	return out
}

// TestTimeline: binary messages of odd sizes are re-cut into 20 ms frames on the stream
// position; a discarded span becomes gap-filled frames at its place (and a "gap" event with the
// cause); a pause adds nothing to the timeline; the partial last frame is padded at close.
func TestTimeline(t *testing.T) {
	e := startEnv(t, testConfig(t), envOpts{workers: 1})
	events := make(chan *nats.Msg, 64)
	sub, err := e.stack.Ingest.NC().ChanSubscribe(subjects.ClassEvents+".acme.>", events)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	c, err := e.dial(t, signOpts{})
	if err != nil {
		t.Fatal(err)
	}
	c.mustOpen()
	ext, in := tone(20000, 0.3, 700), tone(20000, 0.3, 300)
	send := func(from, to int) {
		for i := from; i < to; {
			n := min(333, to-i) // 41.6 ms: never a frame boundary
			c.audio(interleave(ext[i:i+n], in[i:i+n]))
			i += n
		}
	}
	send(0, 8000) // 1 s
	c.sendMsg("discarded", map[string]any{"start": "PT1S", "discarded": "PT0.3S"}, time.Second)
	send(10400, 14400) // 0.5 s after the 0.3 s discarded
	c.sendMsg("paused", map[string]any{}, 1800*time.Millisecond)
	c.sendMsg("resumed", map[string]any{"start": "PT1.8S", "discarded": "PT0.4S"}, 1800*time.Millisecond)
	send(14400, 16030) // 0.20375 s: the last frame is partial
	c.closeSession(2003750 * time.Microsecond)
	call := callFor(c.id)
	eventually(t, 10*time.Second, "the worker to stop the call", func() bool { _, ok := processed.stopped(call); return ok })
	var legs [2][]gotFrame
	for _, f := range processed.frames(call) {
		if !f.h.Has(frame.FlagLast) {
			legs[f.h.Leg] = append(legs[f.h.Leg], f)
		}
	}
	for leg, src := range [][]byte{ext, in} {
		fs := legs[leg]
		if len(fs) != 101 { // 2.00375 s: 100 frames and a padded one
			t.Fatalf("leg %d: %d frames, want 101", leg, len(fs))
		}
		for i, f := range fs {
			filled := i >= 50 && i < 65 || i == 100 // the discarded span, the padded last frame
			if f.h.Has(frame.FlagGapFilled) != filled || f.h.Seq != uint32(i) {
				t.Fatalf("leg %d frame %d: seq %d gap-filled %v, want %v", leg, i, f.h.Seq, f.h.Has(frame.FlagGapFilled), filled)
			}
			switch {
			case filled:
			case i == 100:
				if !bytes.Equal(f.payload[:30], src[16000:16030]) || f.payload[30] != 0xff {
					t.Fatalf("leg %d: the last frame is not the audio padded with silence", leg)
				}
			default:
				if !bytes.Equal(f.payload, src[i*160:][:160]) { // the discarded span is src[8000:10400]
					t.Fatalf("leg %d frame %d: audio differs", leg, i)
				}
			}
		}
	}
	var gap, resumed bool
	deadline := time.After(5 * time.Second)
	for !gap || !resumed {
		select {
		case m := <-events:
			var ev wire.Event
			_ = json.Unmarshal(m.Data, &ev)
			var d map[string]any
			_ = json.Unmarshal(ev.Data, &d)
			gap = gap || ev.Kind == "gap" && d["cause"] == "discarded" && d["ms"] == float64(300)
			resumed = resumed || ev.Kind == "audiohook" && d["what"] == "resumed"
		case <-deadline:
			t.Fatalf("events: gap %v, resumed %v", gap, resumed)
		}
	}
}

// TestTooFast: a client sending audio faster than real time is disconnected once it is
// MaxAhead ahead of the wall clock.
func TestTooFast(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxAhead = time.Second
	e := startEnv(t, cfg, envOpts{workers: 1})
	c, err := e.dial(t, signOpts{})
	if err != nil {
		t.Fatal(err)
	}
	c.mustOpen()
	sil := bytes.Repeat([]byte{0xff}, 3200)
	for i := 0; i < 10; i++ { // 2 s at once
		c.audio(sil)
	}
	if p := disconnectOf(t, c.recv()); p.Reason != "error" || !strings.Contains(p.Info, "ahead of real time") {
		t.Fatalf("disconnect %+v", p)
	}
	c.seq = 1
	c.closeSession(2 * time.Second)
}

// TestPlacementRefused: with no worker the open is answered by disconnect (error) saying 503 and
// when to retry.
func TestPlacementRefused(t *testing.T) {
	e := startEnv(t, testConfig(t), envOpts{workers: 1, place: 500 * time.Millisecond})
	e.stack.Stop(e.stack.Workers[0])
	eventually(t, 15*time.Second, "the router to forget the worker", func() bool { return len(e.stack.Routers[0].Workers()) == 0 })
	c, err := e.dial(t, signOpts{})
	if err != nil {
		t.Fatal(err)
	}
	p := disconnectOf(t, c.open())
	if p.Reason != "error" || !strings.Contains(p.Info, "503") || !strings.Contains(p.Info, "retryAfter PT") {
		t.Fatalf("disconnect %+v", p)
	}
	c.closeSession(0)
}

// TestDrain: once Run's context ends, upgrades get 503 with Retry-After while the sessions up go
// on; after the drain timeout they get disconnect, and Run returns when they have closed.
func TestDrain(t *testing.T) {
	cfg := testConfig(t)
	e := startEnv(t, cfg, envOpts{workers: 1})
	c, err := e.dial(t, signOpts{})
	if err != nil {
		t.Fatal(err)
	}
	c.mustOpen()
	stopped := make(chan error, 1)
	go func() { stopped <- e.stop() }()
	eventually(t, 5*time.Second, "upgrades refused", func() bool {
		_, err := e.dial(t, signOpts{})
		return err != nil
	})
	c2, _ := e.dial(t, signOpts{})
	if c2.resp == nil || c2.resp.StatusCode != http.StatusServiceUnavailable || c2.resp.Header.Get("Retry-After") == "" {
		t.Fatalf("draining upgrade: %+v", c2.resp)
	}
	c.audio(bytes.Repeat([]byte{0xff}, 320)) // the session up still takes audio
	if p := disconnectOf(t, c.recv()); p.Reason != "error" || !strings.Contains(p.Info, "shutting down") {
		t.Fatalf("disconnect %+v", p)
	}
	c.closeSession(20 * time.Millisecond)
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return")
	}
}

// TestL16Mono: a mono L16 stream (internal only) is leg agent, 320-byte frames, little-endian as
// sent.
func TestL16Mono(t *testing.T) {
	e := startEnv(t, testConfig(t), envOpts{workers: 1})
	c, err := e.dial(t, signOpts{})
	if err != nil {
		t.Fatal(err)
	}
	l16 := map[string]any{"type": "audio", "format": "L16", "channels": []string{"internal"}, "rate": 8000}
	c.open(l16)
	pcm := make([]byte, 2*4000)
	for i := range pcm {
		pcm[i] = byte(i * 7)
	}
	for i := 0; i < len(pcm); i += 1000 {
		c.audio(pcm[i : i+1000])
	}
	c.closeSession(500 * time.Millisecond)
	call := callFor(c.id)
	eventually(t, 10*time.Second, "the worker to stop the call", func() bool { _, ok := processed.stopped(call); return ok })
	processed.mu.Lock()
	legs := processed.specs[call]
	processed.mu.Unlock()
	var got []byte
	for _, f := range processed.frames(call) {
		if !f.h.Has(frame.FlagLast) {
			if f.h.Codec != frame.CodecL16 || len(f.payload) != 320 {
				t.Fatalf("frame %+v of %d bytes", f.h, len(f.payload))
			}
			got = append(got, f.payload...)
		}
	}
	if strings.Join(legs, ",") != "agent" || !bytes.Equal(got, pcm) {
		t.Fatalf("legs %v, %d bytes (want %d, identical)", legs, len(got), len(pcm))
	}
}

// TestPauseAccountedPaused: a stream pause is the call's pause (held by the stream), so the
// silence filled in real time while it lasts (from a second after the last audio, longer than the
// worker's idle timeout here) reaches the worker flagged paused, without audio, and accounting
// counts it as paused with 0 lost. An operator's pause laid over it outlasts the stream's
// "resumed": the audio after it stays withheld until the operator resumes, and then flows
// intact at the position the pause began.
func TestPauseAccountedPaused(t *testing.T) {
	e := startEnv(t, testConfig(t), envOpts{workers: 1, idle: 2 * time.Second})
	c, err := e.dial(t, signOpts{})
	if err != nil {
		t.Fatal(err)
	}
	call := callFor(c.id)
	acct, err := e.stack.Ingest.NC().SubscribeSync(subjects.Event("acme", call, "accounting"))
	if err != nil {
		t.Fatal(err)
	}
	defer acct.Unsubscribe()
	operator := func(on bool) wire.PauseReply {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var rep wire.PauseReply
		if err := bus.Request(ctx, e.stack.Ingest.NC(), subjects.IngestVerb(e.stack.Ingest.ID(), subjects.IngestVerbPause),
			wire.PauseRequest{V: wire.V, Tenant: "acme", Call: call, Paused: on, Reason: "card", By: "agent-7"}, &rep); err != nil || !rep.OK {
			t.Fatalf("operator pause %v: %+v %v", on, rep, err)
		}
		return rep
	}
	c.mustOpen()
	ext, in := tone(9600, 0.3, 700), tone(9600, 0.3, 300)
	c.audio(interleave(ext[:3200], in[:3200])) // 0.4 s: frames 0-19
	c.sendMsg("paused", map[string]any{}, 400*time.Millisecond)
	c.sync(400 * time.Millisecond)
	time.Sleep(3 * time.Second) // about 2 s of paused silence, past the worker's idle timeout
	if rep := operator(true); !rep.Paused || len(rep.Sources) != 2 {
		t.Fatalf("operator pause over the stream's: %+v", rep)
	}
	c.sendMsg("resumed", map[string]any{"start": "PT0.4S", "discarded": "PT3S"}, 400*time.Millisecond)
	c.audio(interleave(ext[3200:6400], in[3200:6400])) // withheld: the operator still holds the pause
	c.sync(800 * time.Millisecond)
	if rep := operator(false); rep.Paused {
		t.Fatalf("the operator's resume left the call paused: %+v", rep)
	}
	c.audio(interleave(ext[6400:], in[6400:]))
	c.closeSession(1200 * time.Millisecond)
	eventually(t, 10*time.Second, "the worker to stop the call", func() bool { _, ok := processed.stopped(call); return ok })
	if r, _ := processed.stopped(call); r != "end" {
		t.Fatalf("the worker stopped the call: %s, want end", r)
	}
	var fs []gotFrame
	for _, f := range processed.frames(call) {
		if f.h.Leg == 0 && !f.h.Has(frame.FlagLast) {
			fs = append(fs, f)
		}
	}
	paused := len(fs) - 40
	if paused < 20+50 || paused > 20+200 {
		t.Fatalf("%d paused frames, want 20 withheld and about 100 filled during a 3 s pause", paused)
	}
	for i, f := range fs {
		isPaused := i >= 20 && i < 20+paused
		src := i // live audio: frames 0-19 are ext[0:3200], the last 20 ext[6400:9600]
		if i >= 20+paused {
			src = i - paused + 20
		}
		switch {
		case f.h.Seq != uint32(i):
			t.Fatalf("frame %d: seq %d", i, f.h.Seq)
		case f.h.Has(frame.FlagPaused) != isPaused:
			t.Fatalf("frame %d: paused %v, want %v", i, f.h.Has(frame.FlagPaused), isPaused)
		case isPaused && len(f.payload) != 0:
			t.Fatalf("paused frame %d reached a processor with %d bytes", i, len(f.payload))
		case !isPaused && (f.h.Has(frame.FlagGapFilled) || !bytes.Equal(f.payload, ext[src*160:][:160])):
			t.Fatalf("live frame %d: gap-filled %v or audio differs", i, f.h.Has(frame.FlagGapFilled))
		}
	}
	m, err := acct.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var ev wire.Event
	var a proc.Accounting
	if json.Unmarshal(m.Data, &ev) != nil || json.Unmarshal(ev.Data, &a) != nil || len(a.Legs) != 2 {
		t.Fatalf("accounting %s", m.Data)
	}
	for _, l := range a.Legs {
		if l.Lost != 0 || l.Paused != paused || l.GapFilled != 0 {
			t.Errorf("leg %s: %d lost %v, %d paused (want %d), %d gap-filled", l.Name, l.Lost, l.LostBy, l.Paused, paused, l.GapFilled)
		}
	}
}

// TestUpgradeRate: past its burst, one address gets 429 with Retry-After before its signature is
// even checked.
func TestUpgradeRate(t *testing.T) {
	cfg := testConfig(t)
	cfg.UpgradeRate, cfg.UpgradeBurst = 0.01, 2
	e := startEnv(t, cfg, envOpts{workers: 1})
	for i := 0; i < 2; i++ {
		if _, err := e.dial(t, signOpts{}); err != nil {
			t.Fatalf("upgrade %d: %v", i, err)
		}
	}
	c, err := e.dial(t, signOpts{})
	if err == nil || c.resp == nil || c.resp.StatusCode != http.StatusTooManyRequests || c.resp.Header.Get("Retry-After") == "" {
		t.Fatalf("third upgrade: %v %+v, want 429 with Retry-After", err, c.resp)
	}
}

// TestConnectionProbe: Genesys's connection probe (null conversationId) is opened and closed, and
// places no call.
func TestConnectionProbe(t *testing.T) {
	e := startEnv(t, testConfig(t), envOpts{workers: 1})
	c, err := e.dial(t, signOpts{})
	if err != nil {
		t.Fatal(err)
	}
	c.sendMsg("open", map[string]any{"organizationId": c.org, "conversationId": nullUUID,
		"participant": map[string]any{"id": nullUUID, "ani": "", "aniName": "", "dnis": ""}, "media": []any{stereoPCMU}}, 0)
	c.expect("opened", 1)
	c.audio(bytes.Repeat([]byte{0xff}, 3200))
	if n := len(e.stack.Ingest.Calls()); n != 0 {
		t.Fatalf("%d calls for a probe", n)
	}
	c.closeSession(200 * time.Millisecond)
	eventually(t, 5*time.Second, "the slot released", func() bool { return e.srv.Sessions() == 0 })
	if _, ok := processed.stopped(callFor(c.id)); ok || len(processed.frames(callFor(c.id))) > 0 {
		t.Fatal("the probe reached a worker")
	}
}

// TestSessionBounds: past -audiohook-max-sessions-per-tenant a tenant's upgrade gets 503 with
// Retry-After while another tenant's is taken, and a closed session gives its slot back.
func TestSessionBounds(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxSessions, cfg.MaxSessionsPerTenant = 2, 1
	e := startEnv(t, cfg, envOpts{workers: 1})
	c, err := e.dial(t, signOpts{})
	if err != nil {
		t.Fatal(err)
	}
	refused, err := e.dial(t, signOpts{})
	if err == nil || refused.resp == nil || refused.resp.StatusCode != http.StatusServiceUnavailable || refused.resp.Header.Get("Retry-After") == "" {
		t.Fatalf("a second acme session: %v %+v, want 503 with Retry-After", err, refused.resp)
	}
	if _, err := e.dial(t, signOpts{key: otherKey, secret: base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123"))}); err != nil {
		t.Fatalf("globex's session refused: %v", err)
	}
	if n := e.srv.Sessions(); n != 2 {
		t.Fatalf("%d sessions, want 2", n)
	}
	c.mustOpen()
	c.closeSession(0)
	eventually(t, 5*time.Second, "acme's slot given back", func() bool {
		_, err := e.dial(t, signOpts{})
		return err == nil
	})
}
