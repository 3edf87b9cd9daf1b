package stack

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wav"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// pciAudio is a two-leg 8 kHz L16 call of n frames: the caller (leg 0) is silent but for the
// DTMF digits keyed at the given frames (160 ms each), the agent (leg 1) a steady tone.
func pciAudio(n int, digits map[int]byte) [2][][]byte {
	freqs := map[byte][2]float64{'3': {697, 1477}, '5': {770, 1336}, '9': {852, 1477}}
	var out [2][][]byte
	for leg := range out {
		out[leg] = make([][]byte, n)
		for i := range out[leg] {
			out[leg][i] = make([]byte, 320)
		}
	}
	a := math.Sqrt2 * 32767 * math.Pow(10, -10.0/20)
	for at, d := range digits {
		for k := 0; k < 8*160; k++ {
			x := float64(k) / 8000
			v := a * (math.Sin(2*math.Pi*freqs[d][0]*x) + math.Sin(2*math.Pi*freqs[d][1]*x))
			binary.LittleEndian.PutUint16(out[0][at+k/160][2*(k%160):], uint16(int16(v)))
		}
	}
	for i := 0; i < n*160; i++ {
		v := int16(6000 * math.Sin(2*math.Pi*440*float64(i)/8000))
		binary.LittleEndian.PutUint16(out[1][i/160][2*(i%160):], uint16(v))
	}
	return out
}

func pciSpec(call string) session.Spec {
	return session.Spec{ID: session.ID{Tenant: "acme", Call: call}, Legs: []session.Leg{
		{Index: 0, Name: "caller", Codec: frame.CodecL16, Rate: 8000}, {Index: 1, Name: "agent", Codec: frame.CodecL16, Rate: 8000}}}
}

// eventLog collects a call's events.
type eventLog struct{ *bus.Events }

func watchEvents(t *testing.T, nc *nats.Conn, call string) *eventLog {
	t.Helper()
	evs, err := bus.CollectEvents(nc, subjects.EventsCall("acme", call))
	if err != nil {
		t.Fatal(err)
	}
	return &eventLog{evs}
}

// of returns the events of one kind (from one source, when source is not empty).
func (l *eventLog) of(kind, source string) []wire.Event {
	var out []wire.Event
	for _, ev := range l.Of(kind) {
		if source == "" || ev.Source == source {
			out = append(out, ev)
		}
	}
	return out
}

func pauseVia(t *testing.T, nc *nats.Conn, subject, call string, on bool) wire.PauseReply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var rep wire.PauseReply
	if err := bus.Request(ctx, nc, subject, wire.PauseRequest{V: wire.V, Tenant: "acme", Call: call, Paused: on, Reason: "card", By: "agent-7"}, &rep); err != nil {
		t.Fatalf("%s: %v", subject, err)
	}
	if !rep.OK || rep.Paused != on {
		t.Fatalf("%s paused=%v: %+v", subject, on, rep)
	}
	return rep
}

// checkNoAudio fails when a processor was handed a frame of the paused span [from, to).
func checkNoAudio(t *testing.T, call string, from, to uint32) {
	t.Helper()
	recorded.mu.Lock()
	defer recorded.mu.Unlock()
	for leg := 0; leg < 2; leg++ {
		k := fmt.Sprintf("acme/%s/%d", call, leg)
		for _, seq := range recorded.seqs[k] {
			if seq >= from && seq < to {
				t.Errorf("%s: a processor was handed frame %d of the pause [%d, %d)", k, seq, from, to)
			}
		}
		if len(recorded.gaps[k]) != 0 {
			t.Errorf("%s: gaps %v", k, recorded.gaps[k])
		}
	}
}

// A secure pause through the admin API (router.api.pause): processors get no audio for the
// span, the recording holds silence there, the digit keyed during it never becomes an event,
// accounting shows the span as paused with nothing lost, and after the resume everything runs
// as before.
func TestSecurePauseOverTheAdminAPI(t *testing.T) {
	recorded.reset()
	cfg := fastConfig(t)
	cfg.Worker.Processors = []string{"accounting", "testseq", "dtmf", "record"}
	cfg.Worker.ProcessorOptions = map[string]proc.Options{"record": {"dir": t.TempDir()}}
	cfg.Worker.MaxFrameAge = time.Minute // a loaded machine must not turn this into a stale-drop test
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitWorkers(t, s, 1)
	nc, err := nats.Connect(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	evs := watchEvents(t, nc, "pci")
	var unknown wire.PauseReply
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := bus.Request(ctx, nc, subjects.API("pause"), wire.PauseRequest{V: 1, Tenant: "acme", Call: "nobody", Paused: true}, &unknown); err != nil ||
		unknown.OK || unknown.Code != wire.CodeUnknown {
		t.Errorf("pausing a call nobody owns: %+v %v", unknown, err)
	}

	const n, pauseAt, resumeAt = 150, 50, 100
	audio := pciAudio(n, map[int]byte{20: '5', 70: '9', 120: '3'}) // '9' is keyed during the pause
	c, err := s.Ingest.StartCall(t.Context(), pciSpec("pci"))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the router to see the call", func() bool { return len(s.Routers[0].Calls()) == 1 })
	tk := time.NewTicker(frame.Duration) // real time: the recording fills a pause with silence as wall time allows
	defer tk.Stop()
	for i := 0; i < n; i++ {
		switch i {
		case pauseAt:
			if rep := pauseVia(t, nc, subjects.API("pause"), "pci", true); rep.Ingest != "ingest-1" || rep.Seq[0].Next != pauseAt {
				t.Fatalf("pause reply %+v, want ingest-1 from frame %d", rep, pauseAt)
			}
			eventually(t, 5*time.Second, "router.api.call to show the pause", func() bool {
				var one wire.CallReply
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				return bus.Request(ctx, nc, subjects.API("call"), wire.CallQuery{V: 1, Tenant: "acme", Call: "pci"}, &one) == nil && one.OK && one.Call.Paused
			})
		case resumeAt:
			if rep := pauseVia(t, nc, subjects.API("pause"), "pci", false); rep.Seq[0].Next != resumeAt {
				t.Fatalf("resume reply %+v, want from frame %d", rep, resumeAt)
			}
		}
		<-tk.C
		for leg := 0; leg < 2; leg++ {
			if err := c.Send(leg, audio[leg][i], 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	c.End("hangup")
	eventually(t, 10*time.Second, "accounting and recording", func() bool {
		return len(evs.of("accounting", "")) == 1 && len(evs.of("recording", "")) == 1
	})

	checkNoAudio(t, "pci", pauseAt, resumeAt)
	recorded.mu.Lock()
	for leg := 0; leg < 2; leg++ {
		if got := len(recorded.seqs[fmt.Sprintf("acme/pci/%d", leg)]); got != n-(resumeAt-pauseAt) {
			t.Errorf("leg %d: processors got %d frames, want %d", leg, got, n-(resumeAt-pauseAt))
		}
	}
	recorded.mu.Unlock()

	var acct proc.Accounting
	if err := json.Unmarshal(evs.of("accounting", "")[0].Data, &acct); err != nil {
		t.Fatal(err)
	}
	for _, l := range acct.Legs {
		if l.Paused != resumeAt-pauseAt || l.Lost != 0 || len(l.LostBy) != 0 || l.Processed != n-(resumeAt-pauseAt) {
			t.Errorf("leg %d accounting %+v: want %d paused, 0 lost", l.Leg, l, resumeAt-pauseAt)
		}
	}

	var digits []string
	for _, ev := range evs.of("dtmf", "") {
		var d proc.DTMFEvent
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			t.Fatal(err)
		}
		digits = append(digits, d.Digit)
	}
	if !slices.Equal(digits, []string{"5", "3"}) {
		t.Errorf("dtmf events %v, want [5 3]: the 9 keyed during the pause must not be detected", digits)
	}
	if p, r := evs.of("paused", "ingest/ingest-1"), evs.of("resumed", "ingest/ingest-1"); len(p) != 1 || len(r) != 1 {
		t.Errorf("%d paused and %d resumed events from ingest, want 1 each", len(p), len(r))
	}

	var rec proc.Recording
	if err := json.Unmarshal(evs.of("recording", "")[0].Data, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Status != proc.RecComplete || rec.PausedMS != (resumeAt-pauseAt)*20 {
		t.Fatalf("recording %+v: want complete with paused_ms %d", rec, (resumeAt-pauseAt)*20)
	}
	w, err := wav.ReadFile(rec.Path)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(w.Channels[1]) / 2; got != n*160 {
		t.Fatalf("recording has %d samples, want %d (the pause written as silence)", got, n*160)
	}
	for leg := 0; leg < 2; leg++ {
		var inPause, before int
		for i := 0; i < n*160; i++ {
			v := int16(binary.LittleEndian.Uint16(w.Channels[leg][2*i:]))
			switch {
			case i >= pauseAt*160 && i < resumeAt*160 && v != 0:
				inPause++
			case i < pauseAt*160 && v != 0:
				before++
			}
		}
		if inPause != 0 || before == 0 {
			t.Errorf("recording leg %d: %d non-silent samples in the pause, %d before it", leg, inPause, before)
		}
	}
}

// A worker that dies during a pause: the new worker is replayed the paused frames (flagged, no
// audio) and receives the rest flagged, so the pause holds across the failover; the resume
// then restores processing, and nothing is accounted as lost.
func TestSecurePauseSurvivesFailover(t *testing.T) {
	recorded.reset()
	cfg := faultConfig(t)
	cfg.Workers = 1
	cfg.Worker.MaxFrameAge = time.Minute
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	vnc, err := nats.Connect(s.URL) // the victim's own connection, so it can die without a word
	if err != nil {
		t.Fatal(err)
	}
	defer vnc.Close()
	wc := cfg.Worker
	wc.ID = "victim"
	victim, err := worker.New(wc, worker.Deps{NC: vnc, Log: testLogger(t), Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	vctx, vcancel := context.WithCancel(context.Background())
	defer vcancel()
	vdone := make(chan error, 1)
	go func() { vdone <- victim.Run(vctx) }()
	defer func() { vcancel(); <-vdone; victim.Close() }()
	waitWorkers(t, s, 2)
	nc, err := nats.Connect(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	// Start calls until one is on the victim.
	var c *ingest.Call
	for i := 0; c == nil && i < 4; i++ {
		call, err := s.Ingest.StartCall(t.Context(), pciSpec(fmt.Sprintf("pf-%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		if call.Placements()[0].Worker == "victim" {
			c = call
		} else {
			defer call.End("hangup")
		}
	}
	if c == nil {
		t.Fatal("no call was placed on the victim")
	}
	call := c.ID().Call
	evs := watchEvents(t, nc, call)
	audio := pciAudio(1, nil)
	tk := time.NewTicker(frame.Duration)
	defer tk.Stop()
	sent := 0
	send := func(k int) {
		for j := 0; j < k; j++ {
			<-tk.C
			for leg := 0; leg < 2; leg++ {
				if err := c.Send(leg, audio[leg][0], 0); err != nil {
					t.Fatal(err)
				}
			}
			sent++
		}
	}
	send(25)
	pauseVia(t, nc, subjects.IngestVerb("ingest-1", subjects.IngestVerbPause), call, true)
	pauseAt := uint32(sent)
	send(10)
	vnc.Close() // the victim dies in the middle of the pause
	for i := 0; i < 500 && c.Placements()[0].Worker == "victim"; i++ {
		send(1)
	}
	if w := c.Placements()[0].Worker; w != "worker-1" {
		t.Fatalf("the call is on %s, want worker-1 after the failover", w)
	}
	send(10)
	if !c.Paused() {
		t.Fatal("the failover ended the pause")
	}
	pauseVia(t, s.Ingest.NC(), subjects.IngestVerb("ingest-1", subjects.IngestVerbPause), call, false)
	resumeAt := uint32(sent)
	send(25)
	c.End("hangup")
	eventually(t, 15*time.Second, "worker-1's accounting", func() bool { return len(evs.of("accounting", "worker/worker-1")) == 1 })

	checkNoAudio(t, call, pauseAt, resumeAt)
	recorded.mu.Lock()
	for leg := 0; leg < 2; leg++ {
		seqs := recorded.seqs[fmt.Sprintf("acme/%s/%d", call, leg)]
		var after []uint32
		for _, seq := range seqs {
			if seq >= resumeAt {
				after = append(after, seq)
			}
		}
		if len(after) != sent-int(resumeAt) || after[0] != resumeAt {
			t.Errorf("leg %d: after the resume processors got %v, want %d..%d", leg, after, resumeAt, sent-1)
		}
	}
	recorded.mu.Unlock()
	var acct proc.Accounting
	if err := json.Unmarshal(evs.of("accounting", "worker/worker-1")[0].Data, &acct); err != nil {
		t.Fatal(err)
	}
	for _, l := range acct.Legs {
		if l.Lost != 0 || len(l.LostBy) != 0 || l.Paused == 0 || l.Paused > int(resumeAt-pauseAt) || l.Replayed == 0 || l.Processed < sent-int(resumeAt) {
			t.Errorf("worker-1 leg %d accounting %+v: want the pause's frames from the failover on as paused (some replayed), none lost", l.Leg, l)
		}
	}
	t.Logf("paused from %d to %d; worker-1 accounted %+v", pauseAt, resumeAt, acct.Legs[0])
}

// A drain (make-before-break migration) during a pause: the new worker starts paused, from the
// flag on the frames, and nothing of the span reaches a processor on either worker.
func TestSecurePauseSurvivesDrain(t *testing.T) {
	recorded.reset()
	cfg := fastConfig(t)
	cfg.Workers = 2
	cfg.Worker.MaxFrameAge = time.Minute
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitWorkers(t, s, 2)
	nc, err := nats.Connect(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	evs := watchEvents(t, nc, "pd")
	c, err := s.Ingest.StartCall(t.Context(), pciSpec("pd"))
	if err != nil {
		t.Fatal(err)
	}
	first := c.Placements()[0].Worker
	audio := pciAudio(1, nil)
	tk := time.NewTicker(frame.Duration)
	defer tk.Stop()
	sent := 0
	send := func(k int) {
		for j := 0; j < k; j++ {
			<-tk.C
			for leg := 0; leg < 2; leg++ {
				if err := c.Send(leg, audio[leg][0], 0); err != nil {
					t.Fatal(err)
				}
			}
			sent++
		}
	}
	send(20)
	pauseAt := uint32(pauseVia(t, nc, subjects.API("pause"), "pd", true).Seq[0].Next)
	send(5)
	for _, w := range s.Workers {
		if w.ID() == first {
			s.Stop(w) // drains: the call migrates in the middle of the pause
		}
	}
	for i := 0; i < 500 && c.Placements()[0].Worker == first; i++ {
		send(1)
	}
	second := c.Placements()[0].Worker
	if second == first {
		t.Fatal("the call did not migrate")
	}
	send(10)
	if !c.Paused() {
		t.Fatal("the migration ended the pause")
	}
	resumeAt := uint32(pauseVia(t, nc, subjects.API("pause"), "pd", false).Seq[0].Next)
	send(20)
	c.End("hangup")
	eventually(t, 15*time.Second, "the new worker's accounting", func() bool { return len(evs.of("accounting", "worker/"+second)) == 1 })
	checkNoAudio(t, "pd", pauseAt, resumeAt)
	var acct proc.Accounting
	if err := json.Unmarshal(evs.of("accounting", "worker/"+second)[0].Data, &acct); err != nil {
		t.Fatal(err)
	}
	for _, l := range acct.Legs {
		if l.Lost != 0 || l.Paused == 0 || l.Processed != sent-int(resumeAt) {
			t.Errorf("%s leg %d accounting %+v: want paused frames, %d processed, none lost", second, l.Leg, l, sent-int(resumeAt))
		}
	}
}
