package loadtest

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
)

// rssPhase is a phase that ran calls at once with a max RSS of mb.
func rssPhase(name string, mb float64, calls int) PhaseReport {
	return PhaseReport{Name: name, PeakCalls: calls, Totals: Totals{Sent: 100, Received: 100},
		Processes: []ProcUsage{{PID: 1, MaxRSSMB: mb}}}
}

// The RSS above the baseline is (callrouter's max RSS − the baseline's) / the callrouter phase's
// peak calls, per round and as the rounds' median; -max-rss-per-call fails the run when the
// figure is over the bar and passes it when under, and the figure is in every report format.
func TestRSSAboveBaselineAndItsBar(t *testing.T) {
	// Two rounds: 100 MB over 1,000 calls (104.9 KB a call) and 130 MB over 1,000 (136.3 KB).
	r1b, r1c := rssPhase("baseline", 50, 1000), rssPhase("callrouter", 150, 1000)
	r2b, r2c := rssPhase("baseline", 60, 1000), rssPhase("callrouter", 190, 1000)
	rounds := []RoundReport{{Round: 1, RSS: rssAbove(&r1b, &r1c)}, {Round: 2, RSS: rssAbove(&r2b, &r2c)}}
	if got, want := rounds[0].RSS.PerCallKB, 100*float64(1<<20)/1000/1000; math.Abs(got-want) > 0.001 {
		t.Fatalf("round 1: %v KB per call, want %v", got, want)
	}
	merged := []PhaseReport{
		mergePhases([]phaseResult{{p: r1b, h: newHist()}, {p: r2b, h: newHist()}}),
		mergePhases([]phaseResult{{p: r1c, h: newHist()}, {p: r2c, h: newHist()}}),
	}
	rep := Report{Phases: merged, Rounds: rounds}
	rep.compare()
	if rep.RSS == nil {
		t.Fatal("no RSS above baseline")
	}
	// The run's maxima: 190 − 60 MB; the bar checks the median of the rounds (120.6 KB).
	if got, want := rep.RSS.PerCallKB, round3(130*float64(1<<20)/1000/1000); got != want {
		t.Errorf("run: %v KB per call, want %v", got, want)
	}
	median := round3((rounds[0].RSS.PerCallKB + rounds[1].RSS.PerCallKB) / 2)
	if rep.RSS.MedianRoundPerCallKB != median || rep.RSS.Checked() != median {
		t.Errorf("median of the rounds %v (checked %v), want %v", rep.RSS.MedianRoundPerCallKB, rep.RSS.Checked(), median)
	}
	for _, tc := range []struct {
		bar  float64
		pass bool
	}{{120, false}, {121, true}, {0, true}} {
		cfg := DefaultConfig()
		cfg.Baseline, cfg.MaxRSSPerCall = true, tc.bar
		r := rep
		r.Failures = nil
		r.verdict(&cfg)
		if r.Pass != tc.pass {
			t.Errorf("%v KB per call against bar %v: pass %v (failures %v), want %v", median, tc.bar, r.Pass, r.Failures, tc.pass)
		}
		if !tc.pass && (len(r.Failures) != 1 || !strings.Contains(r.Failures[0], "KB per call above the baseline")) {
			t.Errorf("failures %q", r.Failures)
		}
	}

	var text, html, js bytes.Buffer
	rep.WriteText(&text)
	if err := rep.WriteHTML(&html); err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"text": "RSS above baseline: 136.3 KB per call", "text round": "round 1: 104.9 KB per call", "text median": "median of the rounds: 120.6 KB",
	} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("%s: no %q in\n%s", name, want, text.String())
		}
	}
	if !strings.Contains(html.String(), "136.3 KB per call") || !strings.Contains(html.String(), "<td>104.9</td>") {
		t.Errorf("HTML report without the RSS above baseline")
	}
	var back struct {
		RSS    RSSAbove `json:"rss_above_baseline"`
		Rounds []struct {
			RSS RSSAbove `json:"rss_above_baseline"`
		} `json:"rounds"`
	}
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || back.RSS.MedianRoundPerCallKB != median || len(back.Rounds) != 2 ||
		back.Rounds[1].RSS.PerCallKB != rounds[1].RSS.PerCallKB {
		t.Errorf("JSON report: %+v, %v", back, err)
	}

	// Without a baseline figure the bar cannot pass.
	cfg := DefaultConfig()
	cfg.Baseline, cfg.MaxRSSPerCall = true, 1000
	r := Report{Phases: []PhaseReport{rssPhase("baseline", 0, 0), rssPhase("callrouter", 100, 10)}}
	r.compare()
	r.verdict(&cfg)
	if r.Pass || r.RSS != nil {
		t.Errorf("no baseline RSS: pass %v, RSS %+v", r.Pass, r.RSS)
	}
}

func TestMaxRSSPerCallNeedsBaseline(t *testing.T) {
	for _, tc := range []struct {
		bar      float64
		baseline bool
		want     string
	}{{-1, true, "max-rss-per-call -1"}, {120, false, "max-rss-per-call needs the baseline"}, {120, true, ""}} {
		cfg := DefaultConfig()
		cfg.Inputs, cfg.Baseline, cfg.MaxRSSPerCall = []string{"x.wav"}, tc.baseline, tc.bar
		var p problems
		cfg.checkThresholds(&p)
		var got string
		for _, e := range p {
			got += e.Error() + "; "
		}
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("bar %v baseline %v: %q, want %q", tc.bar, tc.baseline, got, tc.want)
		}
	}
}
