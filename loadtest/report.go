package loadtest

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"
)

// Report is the outcome of a run: one phase per target, the ratios between them, and the
// verdict of the thresholds.
type Report struct {
	Started  time.Time     `json:"started"`
	Machine  Machine       `json:"machine"`
	Config   ReportConfig  `json:"config"`
	Phases   []PhaseReport `json:"phases"`
	Ratio    *Ratio        `json:"ratio_vs_baseline,omitempty"`
	Floor    *Ratio        `json:"ratio_vs_floor,omitempty"` // callrouter over the wildcard floor (-floor)
	Rounds   []RoundReport `json:"rounds,omitempty"`
	RSS      *RSSAbove     `json:"rss_above_baseline,omitempty"` // callrouter's resident memory per call over the baseline's
	Checked  bool          `json:"checked"`
	Pass     bool          `json:"pass"`
	Failures []string      `json:"failures,omitempty"`
}

// Machine describes where the run took place.
type Machine struct {
	Host    string `json:"host"`
	OS      string `json:"os"`
	CPUs    int    `json:"cpus"`
	CPU     string `json:"cpu"`
	MemMB   int64  `json:"mem_mb"`
	Go      string `json:"go"`
	Process string `json:"process"`
}

// ReportConfig is the part of the configuration a reader of the report needs.
type ReportConfig struct {
	Mode         string   `json:"mode"`
	Rounds       int      `json:"rounds"`
	Inputs       []string `json:"inputs"`
	Calls        int      `json:"calls"`
	Legs         int      `json:"legs_per_call"`
	Ramp         float64  `json:"ramp_per_s"`
	CallDuration string   `json:"call_duration"`
	RunTime      string   `json:"run_time"`
	Speed        float64  `json:"speed"`
	Stack        string   `json:"stack"`
	FramesPerSec float64  `json:"offered_frames_per_s"`
	Command      string   `json:"command,omitempty"`
}

// PhaseReport is one phase: callrouter, or the raw NATS baseline.
type PhaseReport struct {
	Name      string          `json:"name"`
	Target    string          `json:"target"`
	Duration  float64         `json:"duration_s"`
	PeakCalls int             `json:"calls_peak_active"` // most calls set up and not yet ended at once
	Started   int             `json:"calls_started"`
	Completed int             `json:"calls_completed"`
	Refused   int             `json:"calls_refused"`
	Failed    int             `json:"calls_failed"`
	Errors    []string        `json:"errors,omitempty"`
	Setup     Percentiles     `json:"setup"`
	Latency   Percentiles     `json:"latency"`
	Curve     []CurvePoint    `json:"latency_curve"`
	Totals    Totals          `json:"frames"`
	LossRatio float64         `json:"loss_ratio"`
	WorstLegs []LegStats      `json:"worst_legs,omitempty"`
	Timeline  []TimelinePoint `json:"timeline"`
	Processes []ProcUsage     `json:"processes,omitempty"`
	PacerLate float64         `json:"pacer_worst_tick_late_ms"`
	// FrameLate is how late frames went out (due time to the end of their tick's send), p50
	// and p99 in ms, at lateStep resolution.
	FrameLate [2]float64 `json:"pacer_frame_late_p50_p99_ms"`
	// SchedWait is how long goroutines of the tester's process waited runnable before they ran
	// while the phase's load was driven, p50 and p99 in ms (the Go runtime's histogram): in-process
	// the whole stack's queueing for a core, against a remote callrouter the tester's alone.
	SchedWait [2]float64   `json:"sched_wait_p50_p99_ms"`
	Machine   MachineUsage `json:"machine"`
	Warnings  []string     `json:"warnings,omitempty"`
	// Impairments counts what the SIP mode did to RTP: packets sent, dropped, delayed, reordered;
	// the WHIP mode's RTP packets sent; the AudioHook and Twilio modes' WebSocket messages sent.
	Impairments map[string]int64 `json:"rtp,omitempty"`
	FramesRate  float64          `json:"frames_per_s"`
}

// Ratio compares callrouter with the baseline measured in the same run.
type Ratio struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	CPU float64 `json:"cpu,omitempty"`
	// MedianRoundP99 is the median of the rounds' own p99 ratios, when phases alternated.
	MedianRoundP99 float64 `json:"median_round_p99,omitempty"`
}

func describeMachine() Machine {
	m := Machine{OS: runtime.GOOS + "/" + runtime.GOARCH, CPUs: runtime.NumCPU(), Go: runtime.Version(),
		Process: fmt.Sprintf("GOMAXPROCS=%d", runtime.GOMAXPROCS(0))}
	m.Host, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				if _, v, ok := strings.Cut(l, ":"); ok {
					m.CPU = strings.TrimSpace(v)
				}
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err == nil {
			m.MemMB = kb / 1024
		}
	}
	return m
}

func ratio(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return round3(a / b)
}

// verdict applies the thresholds.
func (r *Report) verdict(c *Config) {
	r.Checked = c.checks()
	r.Pass = true
	fail := func(format string, a ...any) {
		r.Pass = false
		r.Failures = append(r.Failures, fmt.Sprintf(format, a...))
	}
	for _, p := range r.Phases {
		if p.Totals.Sent == 0 {
			fail("%s: no frame was sent", p.Name)
		}
		if c.MaxLoss >= 0 && p.LossRatio > c.MaxLoss {
			fail("%s: loss %.6f%% (%d lost, %d unaccounted of %d) exceeds %.6f%%", p.Name, 100*p.LossRatio,
				p.Totals.Lost, p.Totals.Unaccounted, p.Totals.Sent, 100*c.MaxLoss)
		}
		if c.MaxRefused >= 0 && p.Started+p.Refused > 0 {
			if rr := float64(p.Refused+p.Failed) / float64(p.Started+p.Refused+p.Failed); rr > c.MaxRefused {
				fail("%s: %d of %d call setups refused or failed (%.2f%% > %.2f%%)", p.Name, p.Refused+p.Failed,
					p.Started+p.Refused+p.Failed, 100*rr, 100*c.MaxRefused)
			}
		}
		if c.MaxP99 > 0 && p.Latency.P99 > float64(c.MaxP99)/1e6 {
			fail("%s: p99 %.3f ms exceeds %v", p.Name, p.Latency.P99, c.MaxP99)
		}
	}
	if c.MaxP99Ratio > 0 && r.Ratio != nil && r.Ratio.P99 > c.MaxP99Ratio {
		fail("p99 is %.2f× the baseline's, over %.2f×", r.Ratio.P99, c.MaxP99Ratio)
	}
	if c.MaxRSSPerCall > 0 {
		switch {
		case r.RSS == nil:
			fail("max-rss-per-call: no RSS above the baseline (needs the baseline and callrouter phases, and calls in both)")
		case r.RSS.Checked() > c.MaxRSSPerCall:
			fail("resident memory %.1f KB per call above the baseline, over %.1f KB", r.RSS.Checked(), c.MaxRSSPerCall)
		}
	}
	if !r.Checked && len(r.Failures) == 0 {
		r.Pass = true
	}
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	return e.Encode(r)
}

// WriteText writes the terminal summary.
func (r *Report) WriteText(w io.Writer) {
	c := r.Config
	fmt.Fprintf(w, "\ncallrouter load test, %s, %d CPUs (%s), %s\n", r.Started.UTC().Format(time.RFC3339), r.Machine.CPUs, r.Machine.CPU, r.Machine.Go)
	fmt.Fprintf(w, "mode %s, stack %s, %d calls × %d legs, ramp %.0f/s, call %s, run %s, speed %g, offered %.0f frames/s\n",
		c.Mode, c.Stack, c.Calls, c.Legs, c.Ramp, c.CallDuration, c.RunTime, c.Speed, c.FramesPerSec)
	fmt.Fprintf(w, "inputs: %s\n\n", strings.Join(c.Inputs, ", "))
	tw := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	tw("%-22s", "")
	for _, p := range r.Phases {
		tw("%18s", p.Name)
	}
	tw("\n")
	row := func(label string, f func(p PhaseReport) string) {
		tw("%-22s", label)
		for _, p := range r.Phases {
			tw("%18s", f(p))
		}
		tw("\n")
	}
	row("calls started", func(p PhaseReport) string { return fmt.Sprint(p.Started) })
	row("calls completed", func(p PhaseReport) string { return fmt.Sprint(p.Completed) })
	row("calls refused/failed", func(p PhaseReport) string { return fmt.Sprintf("%d/%d", p.Refused, p.Failed) })
	row("setup p50/p99 ms", func(p PhaseReport) string { return fmt.Sprintf("%.2f/%.2f", p.Setup.P50, p.Setup.P99) })
	row("frames/s", func(p PhaseReport) string { return fmt.Sprintf("%.0f", p.FramesRate) })
	row("frames sent", func(p PhaseReport) string { return fmt.Sprint(p.Totals.Sent) })
	row("frames received", func(p PhaseReport) string { return fmt.Sprint(p.Totals.Received) })
	row("frames lost", func(p PhaseReport) string { return fmt.Sprint(p.Totals.Lost) })
	row("unaccounted", func(p PhaseReport) string { return fmt.Sprint(p.Totals.Unaccounted) })
	row("duplicated", func(p PhaseReport) string { return fmt.Sprint(p.Totals.Duplicated) })
	row("reordered", func(p PhaseReport) string { return fmt.Sprint(p.Totals.Reordered) })
	row("gap-filled by ingest", func(p PhaseReport) string { return fmt.Sprint(p.Totals.GapFilled) })
	if slices.ContainsFunc(r.Phases, func(p PhaseReport) bool { return p.Totals.Paused > 0 }) {
		row("paused (withheld by ingest; not lost)", func(p PhaseReport) string { return fmt.Sprint(p.Totals.Paused) })
	}
	row("latency p50 ms", func(p PhaseReport) string { return fmt.Sprintf("%.3f", p.Latency.P50) })
	row("latency p90 ms", func(p PhaseReport) string { return fmt.Sprintf("%.3f", p.Latency.P90) })
	row("latency p99 ms", func(p PhaseReport) string { return fmt.Sprintf("%.3f", p.Latency.P99) })
	row("latency p99.9 ms", func(p PhaseReport) string { return fmt.Sprintf("%.3f", p.Latency.P999) })
	row("latency max ms", func(p PhaseReport) string { return fmt.Sprintf("%.3f", p.Latency.Max) })
	row("CPU cores (avg)", func(p PhaseReport) string {
		var s float64
		for _, u := range p.Processes {
			s += u.CPUCores
		}
		return fmt.Sprintf("%.2f", s)
	})
	row("max RSS MB", func(p PhaseReport) string {
		var s float64
		for _, u := range p.Processes {
			s += u.MaxRSSMB
		}
		return fmt.Sprintf("%.0f", s)
	})
	row("calls active at peak", func(p PhaseReport) string { return fmt.Sprint(p.PeakCalls) })
	row("pacer worst late ms", func(p PhaseReport) string { return fmt.Sprintf("%.1f", p.PacerLate) })
	row("frame late p50/p99 ms", func(p PhaseReport) string { return fmt.Sprintf("%.1f/%.1f", p.FrameLate[0], p.FrameLate[1]) })
	row("goroutine run wait p50/p99 ms", func(p PhaseReport) string { return fmt.Sprintf("%.3f/%.3f", p.SchedWait[0], p.SchedWait[1]) })
	row("machine busy cores", func(p PhaseReport) string { return fmt.Sprintf("%.2f", p.Machine.BusyCores) })
	row("  of which others", func(p PhaseReport) string { return fmt.Sprintf("%.2f", p.Machine.BackgroundCores) })
	for _, p := range r.Phases {
		if len(p.Totals.LostBy) > 0 {
			keys := make([]string, 0, len(p.Totals.LostBy))
			for k := range p.Totals.LostBy {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			var parts []string
			for _, k := range keys {
				parts = append(parts, fmt.Sprintf("%s=%d", k, p.Totals.LostBy[k]))
			}
			tw("%s gap causes: %s\n", p.Name, strings.Join(parts, " "))
		}
		for _, e := range p.Errors {
			tw("%s: %s\n", p.Name, e)
		}
		if n, ok := p.Impairments["ws_messages_sent"]; ok {
			tw("%s WebSocket: %d messages sent\n", p.Name, n)
		} else if len(p.Impairments) > 0 {
			tw("%s RTP: sent %d, dropped %d, delayed %d, reordered %d, refused by the kernel %d\n", p.Name, p.Impairments["rtp_sent"], p.Impairments["dropped"],
				p.Impairments["delayed"], p.Impairments["reordered"], p.Impairments["send_failed"])
		}
		for _, e := range p.Warnings {
			tw("%s: WARNING: %s\n", p.Name, e)
		}
	}
	if r.Ratio != nil {
		tw("\ncallrouter / baseline: p50 %.2f×, p90 %.2f×, p99 %.2f×", r.Ratio.P50, r.Ratio.P90, r.Ratio.P99)
		if r.Ratio.CPU > 0 {
			tw(", CPU %.2f×", r.Ratio.CPU)
		}
		tw("\n")
		for _, rr := range r.Rounds {
			tw("  round %d: p50 %.3f / %.3f ms, p99 %.3f / %.3f ms (%.2f×)\n", rr.Round, rr.Callrouter.P50, rr.Baseline.P50,
				rr.Callrouter.P99, rr.Baseline.P99, rr.P99Ratio)
		}
		if r.Ratio.MedianRoundP99 > 0 {
			tw("  median of the rounds' p99 ratios: %.2f×\n", r.Ratio.MedianRoundP99)
		}
	}
	if m := r.RSS; m != nil {
		tw("RSS above baseline: %.1f KB per call (callrouter %.0f MB − baseline %.0f MB, over %d calls)\n", m.PerCallKB,
			m.CallrouterMB, m.BaselineMB, m.Calls)
		for _, rr := range r.Rounds {
			if rr.RSS != nil && len(r.Rounds) > 1 {
				tw("  round %d: %.1f KB per call (%.0f − %.0f MB, %d calls)\n", rr.Round, rr.RSS.PerCallKB, rr.RSS.CallrouterMB,
					rr.RSS.BaselineMB, rr.RSS.Calls)
			}
		}
		if m.MedianRoundPerCallKB != 0 {
			tw("  median of the rounds: %.1f KB per call\n", m.MedianRoundPerCallKB)
		}
	}
	if f := r.Floor; f != nil {
		tw("callrouter / wildcard floor: p50 %.2f×, p90 %.2f×, p99 %.2f×", f.P50, f.P90, f.P99)
		if f.CPU > 0 {
			tw(", CPU %.2f×", f.CPU)
		}
		tw("\n")
		for _, rr := range r.Rounds {
			if rr.Floor != nil {
				tw("  round %d: p99 %.3f / %.3f ms (%.2f×)\n", rr.Round, rr.Callrouter.P99, rr.Floor.P99, rr.FloorP99Ratio)
			}
		}
		if f.MedianRoundP99 > 0 {
			tw("  median of the rounds' p99 ratios: %.2f×\n", f.MedianRoundP99)
		}
	}
	switch {
	case !r.Checked:
	case r.Pass:
		tw("\nPASS\n")
	default:
		tw("\nFAIL\n")
	}
	for _, f := range r.Failures {
		tw("  %s\n", f)
	}
}
