package proc

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/coder/websocket"
)

// flakyReceiver is an AudioHook server whose first connection is dropped (TCP closed, no
// close handshake) after it has read dropAfter binary messages; upgrades after that are answered
// with status refuse until up is closed. It keeps every session's messages.
type flakyReceiver struct {
	dropAfter int      // 0: never
	after     []string // text messages sent after opened
	firstOnly bool     // after: on the first connection only
	refuse    int
	up        chan struct{}
	dropped   chan struct{}

	mu       sync.Mutex
	conns    int
	refused  int
	sessions [][]ahMsg
}

func newFlakyReceiver(dropAfter, refuse int) *flakyReceiver {
	return &flakyReceiver{dropAfter: dropAfter, refuse: refuse, up: make(chan struct{}), dropped: make(chan struct{})}
}

func (r *flakyReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	n := r.conns
	r.conns++
	if n > 0 {
		select {
		case <-r.up:
		default:
			r.refused++
			r.mu.Unlock()
			http.Error(w, "down", r.refuse)
			return
		}
	}
	idx := len(r.sessions)
	r.sessions = append(r.sessions, nil)
	r.mu.Unlock()
	c, err := websocket.Accept(w, req, nil)
	if err != nil {
		return
	}
	defer c.CloseNow()
	ctx := req.Context()
	seq, audio := 0, 0
	reply := func(typ string, params any) {
		seq++
		b, _ := json.Marshal(map[string]any{"version": "2", "type": typ, "id": "x", "seq": seq, "clientseq": 0, "parameters": params})
		_ = c.Write(ctx, websocket.MessageText, b)
	}
	for {
		typ, b, err := c.Read(ctx)
		if err != nil {
			return
		}
		m := ahMsg{Type: "audio", audio: b}
		if typ == websocket.MessageText {
			m = ahMsg{}
			_ = json.Unmarshal(b, &m)
		}
		r.mu.Lock()
		r.sessions[idx] = append(r.sessions[idx], m)
		r.mu.Unlock()
		switch m.Type {
		case "audio":
			if audio++; n == 0 && audio == r.dropAfter {
				close(r.dropped)
				return // the deferred CloseNow drops the connection
			}
		case "open":
			var p struct {
				Media []any `json:"media"`
			}
			_ = json.Unmarshal(m.Parameters, &p)
			reply("opened", map[string]any{"media": p.Media[:1]})
			for _, a := range r.after {
				if r.firstOnly && n > 0 {
					break
				}
				seq++
				_ = c.Write(ctx, websocket.MessageText, []byte(a))
			}
		case "close":
			reply("closed", map[string]any{})
			return
		}
	}
}

func (r *flakyReceiver) snapshot() (sessions [][]ahMsg, refused int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.sessions {
		sessions = append(sessions, append([]ahMsg(nil), s...))
	}
	return sessions, r.refused
}

// forkWith starts a fork of a two-leg PCMU call (tenant acme) to h with the given options.
func forkWith(t *testing.T, h http.Handler, call string, opts Options) (*forkCall, *fakeCall) {
	t.Helper()
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	targets := filepath.Join(t.TempDir(), "targets")
	if err := os.WriteFile(targets, []byte("acme ws"+strings.TrimPrefix(hs.URL, "http")+"/ah key -\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	opts["targets"] = targets
	p, err := newFork(opts)
	if err != nil {
		t.Fatal(err)
	}
	fc := newFakeCall(&filesrc.Recording{Codec: frame.CodecPCMU, Rate: 8000, Frames: make([][][]byte, 2)}, call)
	hd, err := p.Start(fc)
	if err != nil {
		t.Fatal(err)
	}
	fh := hd.(*forkCall)
	t.Cleanup(func() {
		select {
		case <-fh.stop:
		default:
			fh.Stop(StopEnd)
		}
		select {
		case <-fh.done:
		case <-time.After(20 * time.Second):
			t.Error("the fork did not finish")
		}
	})
	return fh, fc
}

// feedPaced feeds slots from..to-1 on both legs, letting the fork's queue empty every 10 slots
// (so that nothing is dropped while it is connected). The receiver drops the first connection
// once it has read what this fed first (dropAfter × 10 slots), so the drop comes after it.
func feedPaced(t *testing.T, h *forkCall, from, to uint32) {
	t.Helper()
	for seq := from; seq < to; seq++ {
		forkFeed(h, 0, seq)
		forkFeed(h, 1, seq)
		if seq%10 == 9 {
			waitFor(t, "the fork to take its queue", func() bool { return len(h.in) == 0 })
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// forkState returns the fork events with the given state.
func forkState(fc *fakeCall, state string) []map[string]any {
	var out []map[string]any
	fc.mu.Lock()
	defer fc.mu.Unlock()
	for _, e := range fc.events {
		if m, ok := e.data.(map[string]any); ok && e.kind == "fork" && m["state"] == state {
			out = append(out, m)
		}
	}
	return out
}

// stitch lays every session's audio on the call's timeline (open's position, advanced by audio
// and discarded spans). A slot that two sessions both carry must be the same audio; it returns
// the two channels per slot (nil: none) and the slots reported discarded.
func stitch(t *testing.T, sessions [][]ahMsg, slots int) (ch [2][][]byte, discarded map[int]bool) {
	t.Helper()
	ch[0], ch[1] = make([][]byte, slots), make([][]byte, slots)
	discarded = map[int]bool{}
	for si, msgs := range sessions {
		pos := -1 // samples
		for _, m := range msgs {
			switch m.Type {
			case "open":
				pos = int(parsePos(t, m.Position) * 8000)
			case "discarded":
				var p struct{ Start, Discarded string }
				_ = json.Unmarshal(m.Parameters, &p)
				if got := int(parsePos(t, p.Start) * 8000); got != pos {
					t.Fatalf("session %d: discarded starts at sample %d, the stream is at %d", si, got, pos)
				}
				n := int(parsePos(t, p.Discarded)*8000 + 0.5)
				for s := pos / 160; s < (pos+n)/160; s++ {
					discarded[s] = true
				}
				pos += n
			case "audio":
				for off := 0; off+1 < len(m.audio); off += 320 {
					slot := pos / 160
					for leg := range 2 {
						b := make([]byte, 160)
						for k := range b {
							b[k] = m.audio[off+2*k+leg]
						}
						if ch[leg][slot] != nil && !bytes.Equal(ch[leg][slot], b) {
							t.Fatalf("session %d: slot %d leg %d differs from what an earlier session had there", si, slot, leg)
						}
						ch[leg][slot] = b
					}
					pos += 160
				}
			}
		}
	}
	return ch, discarded
}

// TestForkReconnectResumes: the receiver drops the connection mid-call and refuses upgrades for
// a while (503); the fork retries with backoff, then opens a session that names the first in
// continuedSessions at a position no later than what the first delivered, and the two sessions
// together carry every frame of the call, none discarded, none dropped; Frame never waited
// while the receiver was down.
func TestForkReconnectResumes(t *testing.T) {
	r := newFlakyReceiver(10, http.StatusServiceUnavailable)
	h, fc := forkWith(t, r, "resumes", Options{"reconnect_backoff": "10ms", "reconnect_backoff_max": "50ms", "reconnect_attempts": "1000"})
	feedPaced(t, h, 0, 100)
	waitFor(t, "the receiver to drop the connection", func() bool {
		select {
		case <-r.dropped:
		default:
			return false
		}
		return len(forkState(fc, "reconnecting")) == 1
	})
	began := time.Now()
	for seq := uint32(100); seq < 200; seq++ { // the receiver is down: the queue holds these
		forkFeed(h, 0, seq)
		forkFeed(h, 1, seq)
	}
	if d := time.Since(began); d > 2*time.Second {
		t.Fatalf("200 frames took %v to hand to a fork whose receiver is down", d)
	}
	waitFor(t, "retries refused", func() bool { _, n := r.snapshot(); return n >= 2 })
	close(r.up)
	feedPaced(t, h, 200, 300)
	h.Stop(StopEnd)
	waitFor(t, "the fork to end", func() bool {
		select {
		case <-h.done:
			return true
		default:
			return false
		}
	})

	sessions, refused := r.snapshot()
	if len(sessions) != 2 {
		t.Fatalf("%d sessions, want 2", len(sessions))
	}
	first, second := sessions[0][0], sessions[1][0]
	delivered := 0
	for _, m := range sessions[0] {
		delivered += len(m.audio) / 2
	}
	var p struct {
		Continued []forkContinued `json:"continuedSessions"`
	}
	if err := json.Unmarshal(second.Parameters, &p); err != nil {
		t.Fatal(err)
	}
	if first.Type != "open" || second.Type != "open" || len(p.Continued) != 1 || p.Continued[0].ID != first.ID ||
		p.Continued[0].Clientseq < 1 || second.ID == first.ID {
		t.Fatalf("second open %s %s, first %s", second.ID, second.Parameters, first.ID)
	}
	if at := int(parsePos(t, second.Position) * 8000); at > delivered || at < delivered-forkReplay*160 {
		t.Fatalf("second session opens at sample %d; the first delivered %d", at, delivered)
	}
	ch, discarded := stitch(t, sessions, 300)
	for seq := range 300 {
		for leg := range 2 {
			if !bytes.Equal(ch[leg][seq], forkPayload(leg, uint32(seq))) {
				t.Fatalf("slot %d leg %d missing or wrong after the reconnect", seq, leg)
			}
		}
	}
	if len(discarded) != 0 || sessions[1][len(sessions[1])-1].Type != "close" {
		t.Fatalf("discarded %v; last message %s", discarded, sessions[1][len(sessions[1])-1].Type)
	}
	closed := forkState(fc, "closed")
	opens := forkState(fc, "open")
	if len(closed) != 1 || closed[0]["reconnects"] != int64(1) || closed[0]["dropped"] != int64(0) || closed[0]["reason"] != "end" ||
		len(opens) != 2 || opens[1]["continues"] != first.ID || refused < 2 {
		t.Fatalf("fork events: open %v, closed %v (refused %d)", opens, closed, refused)
	}
}

// TestForkReconnectDiscardsWhatTheQueueLost: with a queue of 40 frames, the 200 frames that came
// while the receiver was down lose their oldest 160; the resumed session reports exactly those 80
// slots as one discarded span and carries everything else.
func TestForkReconnectDiscardsWhatTheQueueLost(t *testing.T) {
	r := newFlakyReceiver(6, http.StatusServiceUnavailable)
	h, fc := forkWith(t, r, "small", Options{"queue": "40", "reconnect_backoff": "10ms", "reconnect_backoff_max": "50ms", "reconnect_attempts": "1000"})
	feedPaced(t, h, 0, 60)
	waitFor(t, "the fork to notice the drop", func() bool { return len(forkState(fc, "reconnecting")) == 1 })
	for seq := uint32(60); seq < 160; seq++ {
		forkFeed(h, 0, seq)
		forkFeed(h, 1, seq)
	}
	waitFor(t, "retries refused", func() bool { _, n := r.snapshot(); return n >= 1 })
	close(r.up)
	waitFor(t, "the second session to take the queue", func() bool { return len(forkState(fc, "open")) == 2 && len(h.in) == 0 })
	feedPaced(t, h, 160, 200)
	h.Stop(StopEnd)
	waitFor(t, "the fork to end", func() bool {
		select {
		case <-h.done:
			return true
		default:
			return false
		}
	})
	sessions, _ := r.snapshot()
	if len(sessions) != 2 {
		t.Fatalf("%d sessions, want 2", len(sessions))
	}
	ch, discarded := stitch(t, sessions, 200)
	for seq := range 200 {
		lost := seq >= 60 && seq < 140
		if discarded[seq] != lost {
			for _, m := range sessions[1] {
				if m.Type != "audio" {
					t.Logf("%s %s %s", m.Type, m.Position, m.Parameters)
				}
			}
			t.Fatalf("slot %d: discarded %v, want %v", seq, discarded[seq], lost)
		}
		for leg := range 2 {
			if !lost && !bytes.Equal(ch[leg][seq], forkPayload(leg, uint32(seq))) {
				t.Fatalf("slot %d leg %d missing or wrong (%x…; fork events %v)", seq, leg, ch[leg][seq][:2], forkState(fc, "closed"))
			}
			if lost && ch[leg][seq] != nil {
				t.Fatalf("slot %d leg %d: audio where the queue lost it", seq, leg)
			}
		}
	}
	closed := forkState(fc, "closed")
	if len(closed) != 1 || closed[0]["dropped"] != int64(160) || closed[0]["discarded_ms"] != int64(1600) ||
		closed[0]["filled_ms"] != int64(0) || closed[0]["reconnects"] != int64(1) {
		t.Fatalf("closed %v", closed)
	}
}

// TestForkReconnectRefused: a receiver that answers the reconnect with 401 is not asked again:
// the fork event says failed, final, with the status, after one attempt; frames handed over
// afterwards are drained without blocking.
func TestForkReconnectRefused(t *testing.T) {
	r := newFlakyReceiver(4, http.StatusUnauthorized)
	h, fc := forkWith(t, r, "refused", Options{"reconnect_backoff": "10ms", "reconnect_backoff_max": "50ms", "reconnect_attempts": "1000"})
	feedPaced(t, h, 0, 40)
	waitFor(t, "the fork to give up", func() bool { return len(forkState(fc, "failed")) == 1 })
	failed := forkState(fc, "failed")[0]
	if failed["final"] != true || !strings.Contains(failed["why"].(string), "401") || failed["reconnects"] != int64(1) {
		t.Fatalf("failed event %v", failed)
	}
	began := time.Now()
	for seq := uint32(40); seq < 1040; seq++ {
		forkFeed(h, 0, seq)
		forkFeed(h, 1, seq)
	}
	if d := time.Since(began); d > 2*time.Second {
		t.Fatalf("2000 frames took %v to hand to a fork that gave up", d)
	}
	h.Stop(StopEnd)
	waitFor(t, "the fork to end", func() bool {
		select {
		case <-h.done:
			return true
		default:
			return false
		}
	})
	if _, refused := r.snapshot(); refused != 1 {
		t.Fatalf("the receiver refused %d upgrades, want 1 (no retry after 401)", refused)
	}
}

// TestForkOptions: the reconnect and queue options are validated, naming the flag.
func TestForkOptions(t *testing.T) {
	targets := filepath.Join(t.TempDir(), "targets")
	if err := os.WriteFile(targets, []byte("acme ws://127.0.0.1:1/ah key -\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ key, val string }{
		{"queue", "5"}, {"queue", "x"}, {"reconnect_attempts", "-1"}, {"reconnect_backoff", "0s"},
		{"reconnect_backoff_max", "1h"}, {"reconnect_backoff_max", "1ms"},
	} {
		_, err := newFork(Options{"targets": targets, c.key: c.val})
		if err == nil || !strings.Contains(err.Error(), "fork."+c.key) {
			t.Errorf("%s=%s: %v", c.key, c.val, err)
		}
	}
	if _, err := newFork(Options{"targets": targets, "queue": "40", "reconnect_attempts": "0", "reconnect_backoff": "1s", "reconnect_backoff_max": "1s"}); err != nil {
		t.Fatal(err)
	}
}

// TestForkReceiverDisconnect: a receiver's disconnect with reason error is answered with close
// and a new session that names every earlier one in continuedSessions; sessions in a row that end
// before sending anything new count against fork.reconnect_attempts (2: the third ends it), then
// the fork gives up. A
// disconnect with reason unauthorized is final: close, and no new session.
func TestForkReceiverDisconnect(t *testing.T) {
	disc := func(reason string) string {
		return `{"version":"2","type":"disconnect","id":"x","seq":2,"clientseq":1,"parameters":{"reason":"` + reason + `"}}`
	}
	r := newFlakyReceiver(0, 0)
	r.after = []string{disc("error")}
	close(r.up)
	h, fc := forkWith(t, r, "flapping", Options{"reconnect_backoff": "5ms", "reconnect_backoff_max": "20ms", "reconnect_attempts": "2"})
	for seq := uint32(0); seq < 20; seq++ {
		forkFeed(h, 0, seq)
		forkFeed(h, 1, seq)
	}
	waitFor(t, "the fork to give up", func() bool { return len(forkState(fc, "failed")) == 1 })
	failed := forkState(fc, "failed")[0]
	sessions, _ := r.snapshot()
	if failed["final"] != false || !strings.Contains(failed["why"].(string), "before sending anything new") || len(sessions) < 3 || len(sessions) > 23 || failed["reconnects"] != int64(len(sessions)-1) {
		t.Fatalf("failed %v after %d sessions", failed, len(sessions))
	}
	var ids []string
	for i, msgs := range sessions {
		var p struct {
			Continued []forkContinued `json:"continuedSessions"`
		}
		_ = json.Unmarshal(msgs[0].Parameters, &p)
		var named []string
		for _, c := range p.Continued {
			named = append(named, c.ID)
		}
		if strings.Join(named, ",") != strings.Join(ids, ",") {
			t.Fatalf("session %d continues %v, want %v", i, named, ids)
		}
		ids = append(ids, msgs[0].ID)
		if last := msgs[len(msgs)-1]; last.Type != "close" || !strings.Contains(string(last.Parameters), `"disconnect"`) {
			t.Fatalf("session %d ended with %s %s", i, last.Type, last.Parameters)
		}
	}

	r = newFlakyReceiver(0, 0)
	r.after = []string{disc("unauthorized")}
	close(r.up)
	h, fc = forkWith(t, r, "unauthorized", Options{"reconnect_backoff": "5ms", "reconnect_backoff_max": "20ms"})
	forkFeed(h, 0, 0)
	forkFeed(h, 1, 0)
	waitFor(t, "the fork to close", func() bool { return len(forkState(fc, "closed")) == 1 })
	sessions, _ = r.snapshot()
	if closed := forkState(fc, "closed")[0]; closed["reason"] != "disconnect" || closed["reconnects"] != int64(0) || len(sessions) != 1 {
		t.Fatalf("closed %v after %d sessions", closed, len(sessions))
	}
}

// TestForkReconnectRequested: a receiver's "reconnect" (it asks the client to move the session,
// e.g. before it restarts) is honoured: the fork closes the session with reason reconnect and
// opens one that names it in continuedSessions; together they carry every frame.
func TestForkReconnectRequested(t *testing.T) {
	r := newFlakyReceiver(0, http.StatusServiceUnavailable)
	r.after = []string{`{"version":"2","type":"reconnect","id":"x","seq":2,"clientseq":1,"parameters":{"info":"maintenance"}}`}
	r.firstOnly = true
	close(r.up)
	h, fc := forkWith(t, r, "moved", Options{"reconnect_backoff": "10ms", "reconnect_backoff_max": "50ms"})
	feedPaced(t, h, 0, 100)
	h.Stop(StopEnd)
	waitFor(t, "the fork to end", func() bool {
		select {
		case <-h.done:
			return true
		default:
			return false
		}
	})
	sessions, _ := r.snapshot()
	if len(sessions) != 2 {
		t.Fatalf("%d sessions, want 2", len(sessions))
	}
	if last := sessions[0][len(sessions[0])-1]; last.Type != "close" || !strings.Contains(string(last.Parameters), `"reconnect"`) {
		t.Fatalf("the first session ended with %s %s, want close (reconnect)", last.Type, last.Parameters)
	}
	var p struct {
		Continued []forkContinued `json:"continuedSessions"`
	}
	if err := json.Unmarshal(sessions[1][0].Parameters, &p); err != nil || len(p.Continued) != 1 || p.Continued[0].ID != sessions[0][0].ID {
		t.Fatalf("second open %s: want continuedSessions naming %s", sessions[1][0].Parameters, sessions[0][0].ID)
	}
	ch, discarded := stitch(t, sessions, 100)
	for seq := range 100 {
		for leg := range 2 {
			if !bytes.Equal(ch[leg][seq], forkPayload(leg, uint32(seq))) {
				t.Fatalf("slot %d leg %d missing or wrong across the requested reconnect", seq, leg)
			}
		}
	}
	if closed := forkState(fc, "closed"); len(discarded) != 0 || len(closed) != 1 || closed[0]["reason"] != "end" || closed[0]["reconnects"] != int64(1) {
		t.Fatalf("discarded %v, closed %v", discarded, closed)
	}
}
