package probe

import (
	"encoding/json"
	"testing"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/google/go-cmp/cmp"
	"github.com/rs/zerolog"
)

func TestLegObserve(t *testing.T) {
	l := NewLeg()
	for _, s := range []uint32{0, 1, 2, 5, 3, 6, 6, 1, 7} {
		l.Observe(s)
	}
	// 3 and 4 were a gap when 5 arrived: 3 arrives late (reordered), 4 never; 6 and 1 repeat.
	got := map[string]int64{"received": l.Received, "lost": l.Lost, "reordered": l.Reordered, "dup": l.Duplicated, "next": l.Next()}
	want := map[string]int64{"received": 6, "lost": 2, "reordered": 1, "dup": 2, "next": 8}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("leg (-want +got):\n%s", d)
	}
	if l.LostBy[proc.CauseBus] != 2 {
		t.Errorf("lost by cause %v, want 2 bus_loss", l.LostBy)
	}
}

func TestLegKeepsBoundedGaps(t *testing.T) {
	l := NewLeg()
	for i := uint32(0); i < 200; i += 2 {
		l.Observe(i)
	}
	if len(l.gaps) != maxGapsKept || l.Lost != 99 {
		t.Errorf("%d gaps kept, %d lost; want %d, 99", len(l.gaps), l.Lost, maxGapsKept)
	}
}

// fakeCall is a proc.Call that keeps what is emitted.
type fakeCall struct {
	spec   session.Spec
	events map[string][]byte
	log    zerolog.Logger
}

func (f *fakeCall) Spec() *session.Spec { return &f.spec }
func (f *fakeCall) Epoch() uint32       { return 1 }
func (f *fakeCall) Worker() string      { return "w" }
func (f *fakeCall) Pool() string        { return "default" }
func (f *fakeCall) Log() *zerolog.Logger {
	return &f.log
}
func (f *fakeCall) Emit(kind string, data any) {
	b, _ := json.Marshal(data)
	f.events[kind] = b
}

func newFake(tenant string) *fakeCall {
	return &fakeCall{spec: session.Spec{ID: session.ID{Tenant: tenant, Call: "c1"}, Legs: []session.Leg{
		{Index: 0, Name: "caller", Codec: frame.CodecPCMU, Rate: 8000}, {Index: 1, Name: "agent", Codec: frame.CodecPCMU, Rate: 8000}}},
		events: map[string][]byte{}, log: zerolog.Nop()}
}

// play feeds a handler: leg 0 frames 0-9 with 5-6 lost, leg 1 frames 0-3, one replayed, plus a
// duplicate and a late frame.
func play(t *testing.T, h proc.Handler) {
	t.Helper()
	capture := time.Now().Add(-3 * time.Millisecond).UnixNano()
	for seq := uint32(0); seq < 10; seq++ {
		if seq == 5 || seq == 6 {
			continue
		}
		if seq == 7 {
			h.(proc.GapHandler).Gap(proc.Gap{Leg: 0, From: 5, To: 6, Cause: proc.CauseBackpressure})
		}
		h.Frame(&proc.Frame{Header: frame.Header{Leg: 0, Seq: seq, Capture: capture}})
	}
	for seq := uint32(0); seq < 4; seq++ {
		fl := frame.Flags(0)
		if seq == 0 {
			fl = frame.FlagReplayed
		}
		h.Frame(&proc.Frame{Header: frame.Header{Leg: 1, Seq: seq, Capture: capture, Flags: fl}})
	}
	h.(proc.DupHandler).Duplicate(&frame.Header{Leg: 1, Seq: 2})
	h.(proc.DupHandler).Duplicate(&frame.Header{Leg: 0, Seq: 6})
	h.Stop(proc.StopEnd)
}

func TestProcessorPublishesEventWithoutSink(t *testing.T) {
	procs, err := proc.Build([]string{ProcessorName}, nil)
	if err != nil {
		t.Fatal(err)
	}
	fc := newFake("remote-tenant")
	h, err := procs[0].Start(fc)
	if err != nil {
		t.Fatal(err)
	}
	play(t, h)
	var cr CallReport
	if err := json.Unmarshal(fc.events[EventKind], &cr); err != nil {
		t.Fatalf("no %q event: %v", EventKind, err)
	}
	want := []LegReport{
		{Received: 8, Lost: 2, Reordered: 1, LostBy: map[string]int64{proc.CauseBackpressure: 2}},
		{Received: 4, Duplicated: 1, Replayed: 1},
	}
	if d := cmp.Diff(want, cr.Legs); d != "" || cr.Stop != proc.StopEnd {
		t.Errorf("stop %q, legs (-want +got):\n%s", cr.Stop, d)
	}
	hist := hdr.Import(cr.Hist)
	if hist.TotalCount() != 11 || hist.ValueAtQuantile(50) < 2500 || hist.ValueAtQuantile(50) > 1_000_000 {
		t.Errorf("histogram: %d values, p50 %d µs; want 11 live frames of about 3 ms or more", hist.TotalCount(), hist.ValueAtQuantile(50))
	}
}

type memSink struct {
	frames, lost int64
	call, stop   string
	legs         []Leg
}

func (m *memSink) Frame(uint32, time.Duration, time.Time) { m.frames++ }
func (m *memSink) Loss(_ uint32, n int64, _ time.Time)    { m.lost += n }
func (m *memSink) Report(call, stop string, legs []Leg) {
	m.call, m.stop, m.legs = call, stop, legs
}

func TestProcessorWritesToAttachedSink(t *testing.T) {
	s := &memSink{}
	detach, err := Attach("local-tenant", s)
	if err != nil {
		t.Fatal(err)
	}
	defer detach()
	if _, err := Attach("local-tenant", &memSink{}); err == nil {
		t.Error("second sink for one tenant: no error")
	}
	procs, _ := proc.Build([]string{ProcessorName}, nil)
	fc := newFake("local-tenant")
	h, _ := procs[0].Start(fc)
	play(t, h)
	if len(fc.events) != 0 {
		t.Errorf("events %v published despite a sink", fc.events)
	}
	if s.frames != 11 || s.lost != 2 || s.call != "c1" || s.stop != proc.StopEnd || len(s.legs) != 2 || s.legs[0].Received != 8 {
		t.Errorf("sink got %d frames, %d lost, call %q stop %q, %d legs", s.frames, s.lost, s.call, s.stop, len(s.legs))
	}
}

func TestFromAccounting(t *testing.T) {
	legs := FromAccounting(proc.Accounting{Reason: "end", Legs: []proc.LegAccount{
		{Leg: 1, Processed: 7, Lost: 3, LostBy: map[string]int{proc.CauseBus: 3}}}})
	if len(legs) != 2 || legs[0].Received != 0 || legs[1].Received != 7 || legs[1].LostBy[proc.CauseBus] != 3 {
		t.Errorf("legs %+v", legs)
	}
}
