package probe

import (
	"encoding/json"
	"testing"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/loadtest/account"
	"github.com/google/go-cmp/cmp"
	"github.com/rs/zerolog"
)

// fakeCall is a proc.Call that keeps what is emitted.
type fakeCall struct {
	spec   session.Spec
	events map[string][]byte
	log    zerolog.Logger
	sh     *proc.Shared
}

func (f *fakeCall) Spec() *session.Spec { return &f.spec }
func (f *fakeCall) Epoch() uint32       { return 1 }
func (f *fakeCall) Worker() string      { return "w" }
func (f *fakeCall) Pool() string        { return "default" }
func (f *fakeCall) Log() *zerolog.Logger {
	return &f.log
}
func (f *fakeCall) Shared() *proc.Shared { return f.sh }
func (f *fakeCall) Emit(kind string, data any) {
	b, _ := json.Marshal(data)
	f.events[kind] = b
}

func newFake(tenant string) *fakeCall {
	return &fakeCall{spec: session.Spec{ID: session.ID{Tenant: tenant, Call: "c1"}, Legs: []session.Leg{
		{Index: 0, Name: "caller", Codec: frame.CodecPCMU, Rate: 8000}, {Index: 1, Name: "agent", Codec: frame.CodecPCMU, Rate: 8000}}},
		events: map[string][]byte{}, log: zerolog.Nop(), sh: proc.NewShared(2)}
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
	var cr account.CallReport
	if err := json.Unmarshal(fc.events[account.EventKind], &cr); err != nil {
		t.Fatalf("no %q event: %v", account.EventKind, err)
	}
	want := []account.LegReport{
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

// reporterCall is a worker's Call of a superseded call: Emit publishes nothing, Report does.
type reporterCall struct {
	*fakeCall
	reports map[string][]byte
}

func (f *reporterCall) Emit(string, any) {}
func (f *reporterCall) Report(kind string, data any) {
	b, _ := json.Marshal(data)
	f.reports[kind] = b
}

// A call superseded on this worker still reports its share (its successor resumes after the
// frames it processed): through proc.Reporter, which publishes where Emit no longer does.
func TestSupersededShareIsReported(t *testing.T) {
	procs, err := proc.Build([]string{ProcessorName}, nil)
	if err != nil {
		t.Fatal(err)
	}
	fc := &reporterCall{fakeCall: newFake("remote-tenant"), reports: map[string][]byte{}}
	h, err := procs[0].Start(fc)
	if err != nil {
		t.Fatal(err)
	}
	h.Frame(&proc.Frame{Header: frame.Header{Leg: 0, Seq: 0, Capture: time.Now().UnixNano()}})
	h.Stop(proc.StopSuperseded)
	var cr account.CallReport
	if err := json.Unmarshal(fc.reports[account.EventKind], &cr); err != nil {
		t.Fatalf("no %q report: %v", account.EventKind, err)
	}
	if cr.Stop != proc.StopSuperseded || len(cr.Legs) != 2 || cr.Legs[0].Received != 1 {
		t.Errorf("report %+v; want the superseded share of one frame", cr)
	}
}

type memSink struct {
	frames, lost int64
	call, stop   string
	legs         []account.Leg
}

func (m *memSink) Frame(uint32, time.Duration, time.Time) { m.frames++ }
func (m *memSink) Loss(_ uint32, n int64, _ time.Time)    { m.lost += n }
func (m *memSink) Report(call, stop string, legs []account.Leg) {
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

// TestClientReadsTheWorkersEvents holds package account, which the black-box client decodes the
// workers' events with, to the bodies proc writes: the accounting summary, a gap, the causes.
func TestClientReadsTheWorkersEvents(t *testing.T) {
	b, _ := json.Marshal(proc.Accounting{Reason: "end", Legs: []proc.LegAccount{
		{Leg: 1, Name: "agent", Processed: 7, GapFilled: 2, Replayed: 1, Duplicates: 4, Lost: 3, LostBy: map[string]int{proc.CauseBus: 3}}}})
	var a account.Accounting
	if err := json.Unmarshal(b, &a); err != nil {
		t.Fatal(err)
	}
	legs := account.FromAccounting(a)
	if len(legs) != 2 || legs[0].Received != 0 || legs[1].Received != 7 || legs[1].GapFilled != 2 || legs[1].Replayed != 1 ||
		legs[1].Duplicated != 4 || legs[1].Lost != 3 || legs[1].LostBy[account.CauseBus] != 3 || a.Reason != "end" {
		t.Errorf("accounting %s read as %+v, legs %+v", b, a, legs)
	}
	b, _ = json.Marshal(proc.Gap{Leg: 1, From: 5, To: 9, Cause: proc.CauseStale})
	var g account.Gap
	if err := json.Unmarshal(b, &g); err != nil || g != (account.Gap{Leg: 1, From: 5, To: 9, Cause: proc.CauseStale}) || g.Count() != 5 {
		t.Errorf("gap %s read as %+v (%v)", b, g, err)
	}
	if account.CauseBus != proc.CauseBus || account.CauseNetwork != proc.CauseNetwork {
		t.Errorf("causes %q %q, proc's %q %q", account.CauseBus, account.CauseNetwork, proc.CauseBus, proc.CauseNetwork)
	}
}
