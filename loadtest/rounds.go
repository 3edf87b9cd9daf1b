package loadtest

import (
	"slices"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// RoundReport is one baseline/callrouter pair of an alternating run.
type RoundReport struct {
	Round      int         `json:"round"`
	Baseline   Percentiles `json:"baseline"`
	Callrouter Percentiles `json:"callrouter"`
	P99Ratio   float64     `json:"p99_ratio"`
	// Floor is the round's floor phase (-floor), and callrouter's p99 over its p99.
	Floor         *Percentiles `json:"floor,omitempty"`
	FloorP99Ratio float64      `json:"floor_p99_ratio,omitempty"`
	// RSS is the round's callrouter resident memory per call over its baseline's.
	RSS *RSSAbove `json:"rss_above_baseline,omitempty"`
}

// RSSAbove is what callrouter costs in resident memory per concurrent call over the raw NATS
// baseline of the same run: (the callrouter phase's max RSS − the baseline phase's max RSS) /
// the most calls the callrouter phase had active at once, summed over the watched processes (in
// process: the one process holding the tester, nats-server and callrouter). Each phase starts
// after the process has returned its free heap to the system (freeMemory), so a phase's figure
// is not what the one before it left.
type RSSAbove struct {
	BaselineMB   float64 `json:"baseline_max_rss_mb"`
	CallrouterMB float64 `json:"callrouter_max_rss_mb"`
	Calls        int     `json:"calls"`       // the callrouter phase's most calls active at once
	PerCallKB    float64 `json:"per_call_kb"` // 1 KB = 1,000 bytes
	// MedianRoundPerCallKB is the median of the rounds' own figures, when phases alternated;
	// -max-rss-per-call checks it rather than PerCallKB, whose two maxima may come from
	// different rounds.
	MedianRoundPerCallKB float64 `json:"median_round_per_call_kb,omitempty"`
}

// Checked is the figure -max-rss-per-call checks: the median of the rounds' figures when there
// are rounds, else the run's.
func (m *RSSAbove) Checked() float64 {
	if m.MedianRoundPerCallKB != 0 {
		return m.MedianRoundPerCallKB
	}
	return m.PerCallKB
}

// rssAbove compares the callrouter phase c with the baseline phase b; nil when either has no
// memory figure or c had no call active.
func rssAbove(b, c *PhaseReport) *RSSAbove {
	bm, cm := sumRSS(b.Processes), sumRSS(c.Processes)
	if bm <= 0 || cm <= 0 || c.PeakCalls <= 0 {
		return nil
	}
	return &RSSAbove{BaselineMB: bm, CallrouterMB: cm, Calls: c.PeakCalls,
		PerCallKB: round3((cm - bm) * (1 << 20) / float64(c.PeakCalls) / 1000)}
}

func sumRSS(ps []ProcUsage) float64 {
	s := 0.0
	for _, p := range ps {
		s += p.MaxRSSMB
	}
	return round3(s)
}

type phaseResult struct {
	p PhaseReport
	h *hdr.Histogram
}

// mergePhases folds the rounds of one phase into one: counts add up, latency percentiles come
// from the union of the rounds' histograms, timelines follow each other.
func mergePhases(rs []phaseResult) PhaseReport {
	if len(rs) == 1 {
		return rs[0].p
	}
	out := rs[0].p
	h := newHist()
	h.Merge(rs[0].h)
	setup := []Percentiles{rs[0].p.Setup}
	for _, r := range rs[1:] {
		p := r.p
		h.Merge(r.h)
		setup = append(setup, p.Setup)
		offset := out.Duration
		if n := len(out.Timeline); n > 0 {
			offset = max(offset, out.Timeline[n-1].T) // the last interval may end past the phase
		}
		for _, t := range p.Timeline {
			t.T += offset
			out.Timeline = append(out.Timeline, t)
		}
		out.Duration = round3(out.Duration + p.Duration)
		out.Started += p.Started
		out.PeakCalls = max(out.PeakCalls, p.PeakCalls)
		out.Completed += p.Completed
		out.Refused += p.Refused
		out.Failed += p.Failed
		out.Errors = append(out.Errors, p.Errors...)
		out.Totals = addTotals(out.Totals, p.Totals)
		out.WorstLegs = append(out.WorstLegs, p.WorstLegs...)
		out.PacerLate = max(out.PacerLate, p.PacerLate)
		out.FrameLate = [2]float64{max(out.FrameLate[0], p.FrameLate[0]), max(out.FrameLate[1], p.FrameLate[1])}
		out.SchedWait = [2]float64{max(out.SchedWait[0], p.SchedWait[0]), max(out.SchedWait[1], p.SchedWait[1])}
		out.Warnings = append(out.Warnings, p.Warnings...)
		out.Machine.BusyCores = round3((out.Machine.BusyCores + p.Machine.BusyCores) / 2)
		out.Machine.BackgroundCores = round3((out.Machine.BackgroundCores + p.Machine.BackgroundCores) / 2)
		out.Machine.LoadAvg = p.Machine.LoadAvg
		for i := range out.Processes {
			if i < len(p.Processes) {
				out.Processes[i].CPUCores = round3((out.Processes[i].CPUCores + p.Processes[i].CPUCores) / 2)
				out.Processes[i].PeakCores = max(out.Processes[i].PeakCores, p.Processes[i].PeakCores)
				out.Processes[i].MaxRSSMB = max(out.Processes[i].MaxRSSMB, p.Processes[i].MaxRSSMB)
			}
		}
	}
	out.Latency = summarize(h)
	out.Curve = curve(h)
	out.LossRatio = out.Totals.LossRatio()
	if out.Duration > 0 {
		out.FramesRate = round3(float64(out.Totals.Sent) / out.Duration)
	}
	// Setup: the median round's percentiles (the histograms are not kept).
	slices.SortFunc(setup, func(a, b Percentiles) int { return cmpFloat(a.P99, b.P99) })
	out.Setup = setup[len(setup)/2]
	out.Setup.Count = 0
	for _, s := range setup {
		out.Setup.Count += s.Count
	}
	if len(out.WorstLegs) > 50 {
		out.WorstLegs = out.WorstLegs[:50]
	}
	return out
}

func addTotals(a, b Totals) Totals {
	a.Legs += b.Legs
	a.Sent += b.Sent
	a.Received += b.Received
	a.Lost += b.Lost
	a.Duplicated += b.Duplicated
	a.Reordered += b.Reordered
	a.Replayed += b.Replayed
	a.GapFilled += b.GapFilled
	a.Paused += b.Paused
	a.Unaccounted += b.Unaccounted
	lb := map[string]int64{}
	for k, v := range a.LostBy {
		lb[k] += v
	}
	for k, v := range b.LostBy {
		lb[k] += v
	}
	a.LostBy = lb
	st := map[string]int{}
	for k, v := range a.Stops {
		st[k] += v
	}
	for k, v := range b.Stops {
		st[k] += v
	}
	a.Stops = st
	return a
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return round3((s[len(s)/2-1] + s[len(s)/2]) / 2)
}
