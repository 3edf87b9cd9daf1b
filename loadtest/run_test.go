package loadtest

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/callrouter/callrouter/internal/wav"
)

// TestVerdictP99Ratio pins the bar `make loadtest` enforces: a p99 over the allowed multiple of
// the baseline's fails the run, one under it passes, and no bar means no check.
func TestVerdictP99Ratio(t *testing.T) {
	phases := []PhaseReport{
		{Name: "baseline", Totals: Totals{Sent: 100, Received: 100}},
		{Name: "callrouter", Totals: Totals{Sent: 100, Received: 100}},
	}
	for _, tc := range []struct {
		ratio, bar float64
		pass       bool
	}{{2.5, 2, false}, {1.9, 2, true}, {0.8, 2, true}, {50, 0, true}} {
		cfg := DefaultConfig()
		cfg.Baseline = true
		cfg.MaxP99Ratio = tc.bar
		r := Report{Phases: phases, Ratio: &Ratio{P99: tc.ratio}}
		r.verdict(&cfg)
		if r.Pass != tc.pass {
			t.Errorf("p99 ratio %v against bar %v: pass %v (failures %v), want %v", tc.ratio, tc.bar, r.Pass, r.Failures, tc.pass)
		}
	}
}

// TestBlackBoxRunNeedsNoHarness: without a harness the client refuses a run that would start
// callrouter in its process, and accepts the inproc mode's old name.
func TestBlackBoxRunNeedsNoHarness(t *testing.T) {
	in := filepath.Join(t.TempDir(), "a.wav")
	writeWAV(t, in, wav.FormatMuLaw, 8000, 8, 1, 800)
	for _, mode := range []string{ModeInproc, ModeNATS, ModeSIP, ModeBaseline} {
		cfg := DefaultConfig()
		cfg.Mode, cfg.Inputs = mode, []string{in}
		if _, err := Run(context.Background(), cfg, Deps{}); err == nil || !strings.Contains(err.Error(), "no in-process harness") {
			t.Errorf("mode %s without -nats or a harness: %v", mode, err)
		}
	}
}
