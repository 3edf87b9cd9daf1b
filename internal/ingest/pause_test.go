package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

func pause(t *testing.T, nc *nats.Conn, call string, on bool) wire.PauseReply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var rep wire.PauseReply
	if err := bus.Request(ctx, nc, subjects.IngestVerb("in-1", subjects.IngestVerbPause),
		wire.PauseRequest{V: wire.V, Tenant: "acme", Call: call, Paused: on, Reason: "card payment", By: "agent-7"}, &rep); err != nil {
		t.Fatal(err)
	}
	return rep
}

// sent is what the bus carried for one leg: per sequence, the flags and the payload.
type sent struct {
	flags   map[uint32]frame.Flags
	payload map[uint32][]byte
}

func parseFrames(t *testing.T, data []byte, leg uint8, into *sent) {
	t.Helper()
	for len(data) > 0 {
		var h frame.Header
		p, err := h.Unmarshal(data)
		if err != nil {
			t.Fatal(err)
		}
		data = data[frame.HeaderLen+len(p):]
		if h.Leg == leg {
			into.flags[h.Seq], into.payload[h.Seq] = h.Flags, bytes.Clone(p)
		}
	}
}

// watchCall subscribes to call c1's caller leg and events.
func watchCall(t *testing.T, nc *nats.Conn) (audio, events *nats.Subscription) {
	t.Helper()
	audio, err := nc.SubscribeSync(subjects.Audio("acme", "c1", "caller"))
	if err != nil {
		t.Fatal(err)
	}
	if events, err = nc.SubscribeSync(subjects.EventsCall("acme", "c1")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return audio, events
}

// While a call is paused, ingest publishes every frame (the sequence stays gap-free) flagged
// paused and without its audio, keeps no audio in the replay ring either, and announces the
// pause and the resume; a replayed paused frame keeps the flag.
func TestPauseWithholdsAudioFromBusAndRing(t *testing.T) {
	n, nc := testNode(t, 0)
	audio, events := watchCall(t, nc)
	c := pcmCall(t, n, 10) // 0-9 live
	loud := bytes.Repeat([]byte{0x55}, 320)
	rep := pause(t, nc, "c1", true)
	if !rep.OK || !rep.Paused || rep.Ingest != "in-1" || rep.Seq[0].Next != 10 || rep.Until.Sub(rep.Since) != n.cfg.MaxPause {
		t.Fatalf("pause reply %+v", rep)
	}
	if again := pause(t, nc, "c1", true); !again.OK || !again.Paused || !again.Since.Equal(rep.Since) {
		t.Errorf("pausing a paused call: %+v, want the same pause", again)
	}
	for i := 0; i < 5; i++ { // 10-14 paused
		for leg := 0; leg < 2; leg++ {
			if err := c.Send(leg, loud, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	if rep := pause(t, nc, "c1", false); !rep.OK || rep.Paused || rep.Seq[0].Next != 15 {
		t.Fatalf("resume reply %+v", rep)
	}
	for i := 0; i < 5; i++ { // 15-19 live
		if err := c.Send(0, loud, 0); err != nil {
			t.Fatal(err)
		}
	}
	live := sent{flags: map[uint32]frame.Flags{}, payload: map[uint32][]byte{}}
	for len(live.flags) < 20 {
		m, err := audio.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("after %d frames: %v", len(live.flags), err)
		}
		parseFrames(t, m.Data, 0, &live)
	}
	check := func(what string, got sent, replayed bool) {
		t.Helper()
		for seq := uint32(0); seq < 20; seq++ {
			f, p := got.flags[seq], got.payload[seq]
			paused := seq >= 10 && seq < 15
			switch {
			case f&frame.FlagPaused != 0 != paused:
				t.Errorf("%s: frame %d flags %b, paused flag want %v", what, seq, f, paused)
			case paused && len(p) != 0:
				t.Errorf("%s: paused frame %d carries %d bytes of audio", what, seq, len(p))
			case !paused && len(p) != 320:
				t.Errorf("%s: live frame %d carries %d bytes, want 320", what, seq, len(p))
			case replayed && f&frame.FlagReplayed == 0:
				t.Errorf("%s: frame %d not flagged replayed", what, seq)
			}
		}
	}
	check("bus", live, false)
	msg, err := ask(t, nc, replayReq(wire.LegRange{Leg: 0, From: 0, To: 20}))
	if err != nil {
		t.Fatal(err)
	}
	ring := sent{flags: map[uint32]frame.Flags{}, payload: map[uint32][]byte{}}
	parseFrames(t, msg.Data, 0, &ring)
	check("replay", ring, true)
	if msg, err = ask(t, nc, replayReq(wire.LegRange{Leg: 0, From: 10, To: 15})); err != nil {
		t.Fatal(err)
	}
	if len(msg.Data) != 5*frame.HeaderLen || bytes.Contains(msg.Data, loud[:64]) {
		t.Errorf("the replay ring gave out %d bytes for the 5 paused frames, want their headers alone", len(msg.Data))
	}

	kinds, data := nextEvents(t, events, 3)
	var paused, resumed map[string]any
	_ = json.Unmarshal(data["paused"], &paused)
	_ = json.Unmarshal(data["resumed"], &resumed)
	if kinds[0] != "start" || kinds[1] != "paused" || kinds[2] != "resumed" {
		t.Errorf("events %v, want start, paused, resumed (a repeated pause publishes nothing)", kinds)
	}
	if paused["by"] != "agent-7" || paused["reason"] != "card payment" || resumed["by"] != "agent-7" {
		t.Errorf("paused %v resumed %v: want reason and by", paused, resumed)
	}
}

// A pause nobody resumes ends by itself after MaxPause, with a "resumed" event (max_pause).
func TestPauseNeverResumedEndsAtMaxPause(t *testing.T) {
	n, nc := testNode(t, 0)
	n.cfg.MaxPause = 300 * time.Millisecond // read when a pause begins
	events, err := nc.SubscribeSync(subjects.Event("acme", "c1", "resumed"))
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	c := pcmCall(t, n, 1)
	start := time.Now()
	if rep := pause(t, nc, "c1", true); !rep.Paused {
		t.Fatalf("pause reply %+v", rep)
	}
	m, err := events.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("resumed after %v, before the bound", took)
	}
	var ev wire.Event
	var data map[string]any
	if json.Unmarshal(m.Data, &ev) != nil || json.Unmarshal(ev.Data, &data) != nil || data["reason"] != wire.ResumeMaxPause {
		t.Errorf("resumed event %s, want reason %s", m.Data, wire.ResumeMaxPause)
	}
	if c.Paused() {
		t.Error("the call is still paused")
	}
}

// Bad and misdirected pause requests are refused before anything changes.
func TestPauseRequestsAreChecked(t *testing.T) {
	n, nc := testNode(t, 0)
	c := pcmCall(t, n, 1)
	cases := map[string]struct {
		body any
		code string
	}{
		"unknown call":  {wire.PauseRequest{V: 1, Tenant: "acme", Call: "nope", Paused: true}, wire.CodeUnknown},
		"other tenant":  {wire.PauseRequest{V: 1, Tenant: "evil", Call: "c1", Paused: true}, wire.CodeUnknown},
		"bad call":      {wire.PauseRequest{V: 1, Tenant: "acme", Call: "c1.>", Paused: true}, wire.CodeBadRequest},
		"long reason":   {wire.PauseRequest{V: 1, Tenant: "acme", Call: "c1", Paused: true, Reason: string(make([]byte, 200))}, wire.CodeBadRequest},
		"not json":      {"pause!", wire.CodeBadRequest},
		"oversized":     {map[string]string{"pad": string(bytes.Repeat([]byte("x"), wire.MaxControlBytes))}, wire.CodeBadRequest},
		"missing token": {map[string]any{"v": 1, "paused": true}, wire.CodeBadRequest},
	}
	for name, tc := range cases {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var rep wire.PauseReply
		err := bus.Request(ctx, nc, subjects.IngestVerb("in-1", subjects.IngestVerbPause), tc.body, &rep)
		cancel()
		if err != nil || rep.OK || rep.Code != tc.code {
			t.Errorf("%s: %+v %v, want %s", name, rep, err, tc.code)
		}
	}
	if c.Paused() {
		t.Error("a refused request paused the call")
	}
}

// The operator's pause and the stream's are held and lifted apart: neither resume lifts the
// other's hold, frames stay paused until the last hold goes, and one paused/resumed event pair
// spans the overlap.
func TestPauseSourcesOverlap(t *testing.T) {
	n, nc := testNode(t, 0)
	audio, events := watchCall(t, nc)
	c := pcmCall(t, n, 1) // 0 live
	loud := bytes.Repeat([]byte{0x55}, 320)
	send := func() {
		t.Helper()
		if err := c.Send(0, loud, 0); err != nil {
			t.Fatal(err)
		}
	}
	if rep := c.SetPausedBy(PauseStream, true, "audiohook paused", "audiohook/s1"); !rep.Paused || len(rep.Sources) != 1 || rep.Sources[0] != "stream" {
		t.Fatalf("stream pause: %+v", rep)
	}
	send() // 1 paused
	if rep := pause(t, nc, "c1", true); !rep.Paused || len(rep.Sources) != 2 {
		t.Fatalf("operator pause over the stream's: %+v", rep)
	}
	send() // 2 paused
	if rep := c.SetPausedBy(PauseStream, false, "audiohook resumed", "audiohook/s1"); !rep.OK || !rep.Paused || len(rep.Sources) != 1 || rep.Sources[0] != "operator" {
		t.Fatalf("the stream's resume lifted the operator's pause: %+v", rep)
	}
	send() // 3 paused
	if rep := c.SetPausedBy(PauseStream, true, "audiohook paused", "audiohook/s1"); !rep.Paused {
		t.Fatalf("stream pause again: %+v", rep)
	}
	if rep := pause(t, nc, "c1", false); !rep.OK || !rep.Paused || len(rep.Sources) != 1 || rep.Sources[0] != "stream" {
		t.Fatalf("the operator's resume lifted the stream's pause: %+v", rep)
	}
	send() // 4 paused
	if rep := c.SetPausedBy(PauseStream, false, "audiohook resumed", "audiohook/s1"); rep.Paused || len(rep.Sources) != 0 || rep.Seq[0].Next != 5 {
		t.Fatalf("last resume: %+v", rep)
	}
	send() // 5 live
	got := sent{flags: map[uint32]frame.Flags{}, payload: map[uint32][]byte{}}
	for len(got.flags) < 6 {
		m, err := audio.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("after %d frames: %v", len(got.flags), err)
		}
		parseFrames(t, m.Data, 0, &got)
	}
	for seq := uint32(0); seq < 6; seq++ {
		paused := seq >= 1 && seq <= 4
		if got.flags[seq]&frame.FlagPaused != 0 != paused || paused == (len(got.payload[seq]) == 320) {
			t.Errorf("frame %d: flags %b, %d bytes; paused want %v", seq, got.flags[seq], len(got.payload[seq]), paused)
		}
	}
	if kinds, _ := nextEvents(t, events, 3); kinds[0] != "start" || kinds[1] != "paused" || kinds[2] != "resumed" {
		t.Errorf("events %v, want start, paused, resumed", kinds)
	}
	if m, err := events.NextMsg(200 * time.Millisecond); err == nil {
		t.Errorf("an event more: %s", m.Data)
	}
}

// Each source's hold ends by itself after MaxPause, counted from its own start.
func TestPauseHoldsExpireApart(t *testing.T) {
	n, _ := testNode(t, 0)
	c := pcmCall(t, n, 1)
	n.cfg.MaxPause = time.Minute
	t0 := time.Now()
	c.setPaused(PauseOperator, true, "card", "agent-7", t0, false)
	c.setPaused(PauseStream, true, "audiohook paused", "audiohook/s1", t0.Add(30*time.Second), false)
	c.expirePause(t0.Add(61 * time.Second))
	if rep := c.SetPausedBy(PauseStream, true, "", ""); !rep.Paused || len(rep.Sources) != 1 || rep.Sources[0] != "stream" {
		t.Fatalf("after the operator's hold expired: %+v, want the stream's hold alone", rep)
	}
	c.expirePause(t0.Add(91 * time.Second))
	if c.Paused() {
		t.Fatal("still paused after both holds expired")
	}
}

// nextEvents reads n call events: their kinds in order, and the data of each kind.
func nextEvents(t *testing.T, sub *nats.Subscription, n int) ([]string, map[string]json.RawMessage) {
	t.Helper()
	var kinds []string
	data := map[string]json.RawMessage{}
	for len(kinds) < n {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("events so far %v: %v", kinds, err)
		}
		var ev wire.Event
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			t.Fatal(err)
		}
		kinds = append(kinds, ev.Kind)
		data[ev.Kind] = ev.Data
	}
	return kinds, data
}
