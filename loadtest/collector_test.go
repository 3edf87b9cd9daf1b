package loadtest

import (
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/loadtest/account"
	"github.com/callrouter/callrouter/loadtest/probe"
	"github.com/google/go-cmp/cmp"
	"github.com/rs/zerolog"
)

func TestCollectorAccounts(t *testing.T) {
	c := newCollector("acct", time.Now(), time.Second, 2)
	c.sent("a", []int64{10, 10})
	c.sent("b", []int64{10})
	ta, tb := account.NewLeg(), account.NewLeg()
	for i := uint32(0); i < 10; i++ {
		ta.InOrder(i)
		c.Frame(1, time.Millisecond, time.Now())
	}
	tb.Gap(account.Gap{From: 0, To: 1, Cause: proc.CauseBackpressure})
	for i := uint32(2); i < 10; i++ {
		tb.InOrder(i)
	}
	c.Report("a", proc.StopEnd, []account.Leg{ta, tb})
	tot, bad := c.finish(10)
	// Call b never reported: its 10 frames are unaccounted.
	want := Totals{Legs: 3, Sent: 30, Received: 18, Lost: 2, Unaccounted: 10,
		LostBy: map[string]int64{proc.CauseBackpressure: 2, CauseUnaccounted: 10}, Stops: map[string]int{"end": 1}}
	if d := cmp.Diff(want, tot); d != "" {
		t.Errorf("totals (-want +got):\n%s", d)
	}
	if len(bad) != 2 || bad[0].Call != "b" || bad[1].Leg != 1 {
		t.Errorf("worst legs %+v, want b/0 then a/1", bad)
	}
	if got := tot.LossRatio(); got != 12.0/30 {
		t.Errorf("loss ratio %v, want 0.4", got)
	}
	if p := summarize(c.latency()); p.Count != 10 || p.P50 != 1 || p.Max != 1 {
		t.Errorf("latency %+v, want 10 × 1 ms", p)
	}
	tl := c.timeline()
	if len(tl) == 0 || tl[0].Received != 10 || tl[0].P99MS < 1 || tl[0].P99MS > 1.2 {
		t.Errorf("timeline %+v, want 10 frames with p99 about 1 ms in the first interval", tl)
	}
}

func TestConfigValidateNamesFields(t *testing.T) {
	c := DefaultConfig()
	c.Calls, c.Speed, c.Mode, c.MaxP99Ratio = 0, 0, "smtp", 2
	err := c.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"input", "calls 0", "speed 0", `mode "smtp"`, "max-p99-ratio needs the baseline"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	c = DefaultConfig()
	c.Inputs = []string{"x.wav"}
	if err := c.Validate(); err != nil {
		t.Errorf("defaults with an input: %v", err)
	}
}

// TestFramePathAllocatesNothing pins the worker-side per-frame path (probe handler → collector)
// at zero allocations.
func TestFramePathAllocatesNothing(t *testing.T) {
	c := newCollector("allocs", time.Now(), time.Hour, 4)
	detach, err := probe.Attach(c.tenant, c)
	if err != nil {
		t.Fatal(err)
	}
	defer detach()
	h := newProbeHandler(t, "allocs")
	f := &proc.Frame{Header: frame.Header{Leg: 0, Capture: time.Now().UnixNano()}}
	if n := testing.AllocsPerRun(1000, func() { f.Header.Seq++; h.Frame(f) }); n != 0 {
		t.Errorf("%v allocations per frame, want 0", n)
	}
}

func BenchmarkFramePath(b *testing.B) {
	c := newCollector("bench-frames", time.Now(), time.Hour, 4)
	detach, err := probe.Attach(c.tenant, c)
	if err != nil {
		b.Fatal(err)
	}
	defer detach()
	h := newProbeHandler(b, "bench-frames")
	f := &proc.Frame{Header: frame.Header{Leg: 0, Capture: time.Now().UnixNano()}}
	b.ReportAllocs()
	for b.Loop() {
		f.Header.Seq++
		h.Frame(f)
	}
}

type nopCall struct {
	spec session.Spec
	sh   *proc.Shared
}

func (c *nopCall) Spec() *session.Spec  { return &c.spec }
func (c *nopCall) Epoch() uint32        { return 1 }
func (c *nopCall) Worker() string       { return "w" }
func (c *nopCall) Pool() string         { return "p" }
func (c *nopCall) Emit(string, any)     {}
func (c *nopCall) Log() *zerolog.Logger { l := zerolog.Nop(); return &l }
func (c *nopCall) Shared() *proc.Shared {
	if c.sh == nil {
		c.sh = proc.NewShared(len(c.spec.Legs))
	}
	return c.sh
}

func newProbeHandler(tb testing.TB, tenant string) proc.Handler {
	tb.Helper()
	ps, err := proc.Build([]string{probe.ProcessorName}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	h, err := ps[0].Start(&nopCall{spec: session.Spec{ID: session.ID{Tenant: tenant, Call: "c"},
		Legs: []session.Leg{{Index: 0, Name: "caller", Codec: frame.CodecPCMU, Rate: 8000}}}})
	if err != nil {
		tb.Fatal(err)
	}
	return h
}

// TestPausedFramesAreAccounted: the probe counts a pause's frames (proc.PauseHandler) and the
// span between two paused frames (cause paused) as paused, and the collector takes them as
// accounted: nothing lost, nothing unaccounted.
func TestPausedFramesAreAccounted(t *testing.T) {
	c := newCollector("paused", time.Now(), time.Hour, 4)
	detach, err := probe.Attach(c.tenant, c)
	if err != nil {
		t.Fatal(err)
	}
	defer detach()
	h := newProbeHandler(t, "paused")
	ph, ok := h.(proc.PauseHandler)
	if !ok {
		t.Fatal("the probe does not hear of paused frames (proc.PauseHandler)")
	}
	hdr := func(seq uint32) *frame.Header { return &frame.Header{Seq: seq, Capture: time.Now().UnixNano()} }
	h.Frame(&proc.Frame{Header: *hdr(0)})
	ph.Paused(hdr(1))
	h.(proc.GapHandler).Gap(proc.Gap{Leg: 0, From: 2, To: 3, Cause: proc.CausePaused})
	ph.Paused(hdr(4))
	h.Frame(&proc.Frame{Header: *hdr(5)})
	h.Stop(proc.StopEnd)
	c.sent("c", []int64{6})
	tot, bad := c.finish(10)
	if tot.Sent != 6 || tot.Received != 2 || tot.Paused != 4 || tot.Lost != 0 || tot.Unaccounted != 0 || len(bad) != 0 {
		t.Errorf("totals %+v, worst %+v; want 6 sent, 2 received, 4 paused, none lost or unaccounted", tot, bad)
	}
	if c.lost.Load() != 0 {
		t.Errorf("%d frames on the loss timeline, want 0", c.lost.Load())
	}
}
