package loadtest

import (
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/proc"
	"github.com/google/go-cmp/cmp"
)

func TestLegTrackerObserve(t *testing.T) {
	tr := newLegTracker()
	for _, s := range []uint32{0, 1, 2, 5, 3, 6, 6, 1, 7} {
		tr.observe(s)
	}
	// 3 and 4 were a gap when 5 arrived: 3 arrives late (reordered), 4 never; 6 and 1 repeat.
	got := map[string]int64{"received": tr.received, "lost": tr.lost, "reordered": tr.reordered, "dup": tr.dup, "next": tr.next}
	want := map[string]int64{"received": 6, "lost": 2, "reordered": 1, "dup": 2, "next": 8}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("tracker (-want +got):\n%s", d)
	}
	if tr.lostBy[proc.CauseBus] != 2 {
		t.Errorf("lost by cause %v, want 2 bus_loss", tr.lostBy)
	}
}

func TestLegTrackerKeepsBoundedGaps(t *testing.T) {
	tr := newLegTracker()
	for i := uint32(0); i < 200; i += 2 {
		tr.observe(i)
	}
	if len(tr.gaps) != maxGapsKept || tr.lost != 99 {
		t.Errorf("%d gaps kept, %d lost; want %d, 99", len(tr.gaps), tr.lost, maxGapsKept)
	}
}

func TestCollectorAccounts(t *testing.T) {
	c := newCollector("acct", time.Now(), time.Second, 2)
	c.sent("a", []int64{10, 10})
	c.sent("b", []int64{10})
	ta, tb := newLegTracker(), newLegTracker()
	for i := uint32(0); i < 10; i++ {
		ta.inOrder(i)
		c.frame(1, time.Millisecond, time.Now())
	}
	tb.gap(proc.Gap{From: 0, To: 1, Cause: proc.CauseBackpressure})
	for i := uint32(2); i < 10; i++ {
		tb.inOrder(i)
	}
	c.report("a", proc.StopEnd, []legTracker{ta, tb})
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
	c.Calls, c.Speed, c.Mode, c.MaxP99Ratio = 0, 0, "sip", 2
	err := c.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"input", "calls 0", "speed 0", `mode "sip"`, "max-p99-ratio needs the baseline"} {
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
