package proc

import (
	"bytes"
	"encoding/json"
	"fmt"
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

// ahMsg is a client message as a test receiver saw it; audio follows the text messages before it.
type ahMsg struct {
	Type       string          `json:"type"`
	ID         string          `json:"id"`
	Position   string          `json:"position"`
	Parameters json.RawMessage `json:"parameters"`
	audio      []byte
}

// testReceiver is an AudioHook server that answers open and close, sends what it is told after
// opened, and keeps every client message.
type testReceiver struct {
	after []string // text messages sent after opened
	mu    sync.Mutex
	msgs  []ahMsg
	done  chan struct{}
}

func (r *testReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	c, err := websocket.Accept(w, req, nil)
	if err != nil {
		return
	}
	defer c.CloseNow()
	defer close(r.done)
	ctx := req.Context()
	seq := 0
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
		r.mu.Lock()
		if typ == websocket.MessageBinary {
			r.msgs = append(r.msgs, ahMsg{Type: "audio", audio: b})
			r.mu.Unlock()
			continue
		}
		var m ahMsg
		_ = json.Unmarshal(b, &m)
		r.msgs = append(r.msgs, m)
		r.mu.Unlock()
		switch m.Type {
		case "open":
			var p struct {
				Media []any `json:"media"`
			}
			_ = json.Unmarshal(m.Parameters, &p)
			reply("opened", map[string]any{"media": p.Media[:1]})
			for _, s := range r.after {
				_ = c.Write(ctx, websocket.MessageText, []byte(s))
			}
		case "close":
			reply("closed", map[string]any{})
			return
		}
	}
}

// forkTo starts a fork of a two-leg PCMU call (tenant acme) to a test receiver.
func forkTo(t *testing.T, r *testReceiver, call string) (*forkCall, *fakeCall) {
	t.Helper()
	r.done = make(chan struct{})
	hs := httptest.NewServer(r)
	t.Cleanup(hs.Close)
	targets := filepath.Join(t.TempDir(), "targets")
	if err := os.WriteFile(targets, []byte("acme ws"+strings.TrimPrefix(hs.URL, "http")+"/ah key -\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := newFork(Options{"targets": targets})
	if err != nil {
		t.Fatal(err)
	}
	fc := newFakeCall(&filesrc.Recording{Codec: frame.CodecPCMU, Rate: 8000, Frames: make([][][]byte, 2)}, call)
	h, err := p.Start(fc)
	if err != nil {
		t.Fatal(err)
	}
	return h.(*forkCall), fc
}

func forkPayload(leg int, seq uint32) []byte {
	return bytes.Repeat([]byte{byte(leg*100) + byte(seq)}, 160)
}

func forkFeed(h *forkCall, leg int, seq uint32) {
	h.Frame(&Frame{Header: frame.Header{Leg: uint8(leg), Seq: seq, Codec: frame.CodecPCMU}, Payload: forkPayload(leg, seq)})
}

// saw reports whether a text message the receiver got has s in its parameters.
func (r *testReceiver) saw(s string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.msgs {
		if strings.Contains(string(m.Parameters), s) {
			return true
		}
	}
	return false
}

func (r *testReceiver) wait(t *testing.T, h *forkCall) []ahMsg {
	t.Helper()
	select {
	case <-h.done:
	case <-time.After(20 * time.Second):
		t.Fatal("the fork did not finish")
	}
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the receiver did not finish")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.msgs
}

// timeline lays the binary audio the receiver got at its positions: open's position, advanced by
// each binary message's samples and each discarded span. It returns the two channels from slot
// 0, 0x00 where nothing arrived (the test payloads never carry 0x00 except where asked).
func timeline(t *testing.T, msgs []ahMsg, slots int) (ch [2][]byte, discarded []string) {
	t.Helper()
	ch[0], ch[1] = make([]byte, slots*160), make([]byte, slots*160)
	pos := -1
	for _, m := range msgs {
		switch m.Type {
		case "open":
			pos = int(parsePos(t, m.Position) * 8000)
		case "discarded":
			var p struct{ Start, Discarded string }
			if err := json.Unmarshal(m.Parameters, &p); err != nil {
				t.Fatal(err)
			}
			if got := int(parsePos(t, p.Start) * 8000); got != pos {
				t.Fatalf("discarded starts at sample %d, the stream is at %d", got, pos)
			}
			pos += int(parsePos(t, p.Discarded) * 8000)
			discarded = append(discarded, p.Start+"+"+p.Discarded)
		case "audio":
			for i := 0; i+1 < len(m.audio); i += 2 {
				ch[0][pos], ch[1][pos] = m.audio[i], m.audio[i+1]
				pos++
			}
		default:
			if m.Position != "" && int(parsePos(t, m.Position)*8000) != pos {
				t.Fatalf("%s at position %s, the stream is at sample %d", m.Type, m.Position, pos)
			}
		}
	}
	return ch, discarded
}

func parsePos(t *testing.T, s string) float64 {
	var f float64
	if _, err := fmt.Sscanf(strings.TrimSuffix(strings.TrimPrefix(s, "PT"), "S"), "%g", &f); err != nil {
		t.Fatalf("position %q", s)
	}
	return f
}

// TestForkTimeline: frames go out at their sequence's position; a frame missing on one leg is
// silence on that channel; a span neither leg has is `discarded`, not silence, and goes out as
// soon as the worker reports it (a gap, paused frames); a replayed frame behind what was sent is
// dropped; every message's position is where the stream is.
func TestForkTimeline(t *testing.T) {
	r := &testReceiver{}
	h, fc := forkTo(t, r, "timeline")
	for seq := uint32(0); seq < 50; seq++ {
		forkFeed(h, 0, seq)
		forkFeed(h, 1, seq)
	}
	forkFeed(h, 0, 5) // late: sent already
	for seq := uint32(350); seq < 360; seq++ {
		forkFeed(h, 0, seq)
		if seq != 352 {
			forkFeed(h, 1, seq)
		}
	}
	h.Gap(Gap{Leg: 1, From: 352, To: 352, Cause: CauseBus})
	// A gap on both legs, then a paused frame on both: reported by the worker, so the fork sends
	// on at once instead of waiting for the frames.
	h.Gap(Gap{Leg: 0, From: 360, To: 363, Cause: CauseBus})
	h.Gap(Gap{Leg: 1, From: 360, To: 363, Cause: CauseBus})
	h.Paused(&frame.Header{Leg: 0, Seq: 364})
	h.Paused(&frame.Header{Leg: 1, Seq: 364})
	for seq := uint32(365); seq < 370; seq++ {
		forkFeed(h, 0, seq)
		forkFeed(h, 1, seq)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !r.saw(`"start":"PT7.2S"`) {
		if time.Now().After(deadline) {
			t.Fatal("the gap the worker reported was not sent as discarded while the call went on")
		}
		time.Sleep(10 * time.Millisecond)
	}
	h.Stop(StopEnd)
	ch, discarded := timeline(t, r.wait(t, h), 370)
	for seq := 0; seq < 370; seq++ {
		for leg := range 2 {
			want := forkPayload(leg, uint32(seq))
			switch {
			case seq >= 50 && seq < 350 || seq >= 360 && seq < 365:
				want = make([]byte, 160) // nothing arrived there
			case leg == 1 && seq == 352:
				want = bytes.Repeat([]byte{0xff}, 160) // μ-law silence
			}
			if got := ch[leg][seq*160 : seq*160+160]; !bytes.Equal(got, want) {
				t.Fatalf("leg %d slot %d: got %x…, want %x…", leg, seq, got[:4], want[:4])
			}
		}
	}
	if strings.Join(discarded, ",") != "PT1S+PT6S,PT7.2S+PT0.1S" {
		t.Fatalf("discarded %v, want 1 s → 7 s and 7.2 s → 7.3 s", discarded)
	}
	closed := fc.of("fork")[len(fc.of("fork"))-1].(map[string]any)
	if closed["late"] != int64(1) || closed["filled_ms"] != int64(20) || closed["discarded_ms"] != int64(6100) || closed["position"] != "PT7.4S" {
		t.Fatalf("closed event %v", closed)
	}
}

// TestForkContinues: a fork whose first frame is not at the call's start continues the call's
// first session: open at that frame's position, continuedSessions naming the session id a fork
// from the start would have had, and the same conversationId.
func TestForkContinues(t *testing.T) {
	var opens []ahMsg
	for _, first := range []uint32{0, 100} {
		r := &testReceiver{}
		h, _ := forkTo(t, r, "moved")
		for seq := first; seq < first+20; seq++ {
			forkFeed(h, 0, seq)
			forkFeed(h, 1, seq)
		}
		h.Stop(StopEnd)
		msgs := r.wait(t, h)
		ch, _ := timeline(t, msgs, 120)
		for seq := first; seq < first+20; seq++ {
			if !bytes.Equal(ch[1][seq*160:seq*160+160], forkPayload(1, seq)) {
				t.Fatalf("first frame %d: slot %d not where it belongs", first, seq)
			}
		}
		opens = append(opens, msgs[0])
	}
	var p [2]struct {
		ConversationID string `json:"conversationId"`
		Continued      []struct {
			ID        string `json:"id"`
			Serverseq int    `json:"serverseq"`
			Clientseq int    `json:"clientseq"`
		} `json:"continuedSessions"`
	}
	for i := range p {
		if err := json.Unmarshal(opens[i].Parameters, &p[i]); err != nil {
			t.Fatal(err)
		}
	}
	if opens[0].Position != "PT0S" || len(p[0].Continued) != 0 || opens[1].Position != "PT2S" || len(p[1].Continued) != 1 ||
		p[1].Continued[0].ID != opens[0].ID || opens[1].ID == opens[0].ID || p[0].ConversationID != p[1].ConversationID {
		t.Fatalf("opens %s %s / %s %s", opens[0].Position, opens[0].Parameters, opens[1].Position, opens[1].Parameters)
	}
}

// TestForkReceiverEvents: entities of the receiver's event messages become fork.event events, at
// most the burst at once; malformed messages and entities are counted and dropped.
func TestForkReceiverEvents(t *testing.T) {
	ev := func(entities string) string {
		return `{"version":"2","type":"event","id":"x","seq":2,"clientseq":1,"parameters":{"entities":` + entities + `}}`
	}
	var many []string
	for i := range forkEventBurst + 10 {
		many = append(many, fmt.Sprintf(`{"type":"transcript","data":{"n":%d}}`, i))
	}
	r := &testReceiver{after: []string{
		"not json",
		ev(`[]`),
		ev(`[{"data":{"n":1}}]`), // no type
		ev(`[{"type":"x","data":"` + strings.Repeat("a", forkEntityMax) + `"}]`), // too big
		ev(`[{"type":"agentassist","data":null}]`),                               // no data
		ev(`[` + strings.Join(many, ",") + `]`),
	}}
	h, fc := forkTo(t, r, "events")
	at := time.Now()
	h.clock = func() time.Time { return at } // no refill while the entities are read, however slowly
	for seq := uint32(0); seq < 20; seq++ {
		forkFeed(h, 0, seq)
		forkFeed(h, 1, seq)
	}
	// The events precede closed on the connection, so they are handled before the fork ends.
	deadline := time.Now().Add(10 * time.Second)
	for h.events.Load()+h.eventsLimited.Load() < int64(len(many)) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	h.Stop(StopEnd)
	r.wait(t, h)
	fc.mu.Lock()
	evs := fc.of(ForkEventKind)
	fc.mu.Unlock()
	if len(evs) != forkEventBurst {
		t.Fatalf("%d fork.event events, want the burst of %d", len(evs), forkEventBurst)
	}
	if e := evs[3].(forkEvent); e.Type != "transcript" || string(e.Data) != `{"n":3}` || e.Session == "" {
		t.Fatalf("event %+v", e)
	}
	closed := fc.of("fork")[len(fc.of("fork"))-1].(map[string]any)
	if closed["events"] != int64(forkEventBurst) || closed["events_limited"] != int64(10) || closed["events_malformed"] != int64(5) {
		t.Fatalf("closed event %v", closed)
	}
}

// TestParseForkTargets: AudioHook and Twilio lines, and the errors a bad line gets.
func TestParseForkTargets(t *testing.T) {
	good := "# comment\nacme wss://ah.example/ws key c2VjcmV0\nbeta twilio wss://tw.example/media tok\ngamma twilio ws://127.0.0.1:9/m\n"
	ts, err := ParseForkTargets(strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	if a, b, g := ts["acme"], ts["beta"], ts["gamma"]; a.Twilio || string(a.Secret) != "secret" || !b.Twilio || b.Token != "tok" ||
		b.URL != "wss://tw.example/media" || !g.Twilio || g.Token != "" {
		t.Fatalf("targets %+v", ts)
	}
	for _, bad := range []string{
		"beta twilio wss://tw.example/media?token=x tok\n", // Media Streams URLs carry no query
		"beta twilio https://tw.example/media\n",
		"beta twilio wss://tw.example/media tok extra\n",
		"beta twilio\n",
		"acme wss://a/ws k - o\nacme twilio wss://b/m\n", // a tenant twice
	} {
		if _, err := ParseForkTargets(strings.NewReader(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
