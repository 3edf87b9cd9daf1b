package hostile

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"
)

// EnvReport names a file the hostile-input table is written to (markdown).
const EnvReport = "CALLROUTER_HOSTILE_REPORT"

// row is one attack in the table.
type row struct {
	attack   string
	did      []string // what the node did
	cpu      time.Duration
	rssDelta int64
	peak     int64  // the ingest's peak RSS after the attack
	peakUp   int64  // how much the attack raised it
	metrics  [2]int // /metrics bytes before, after
	series   [2]int // series before, after
	frames   string // frames published for the attacked call; "" when none is
	lost     int    // frames the victim calls lost (seqlog holes, or gap events if more)
	gaps     map[string]int
	stalled  []string
	alive    string // "" or why the node is not alive
	took     time.Duration
	failures []string
}

// didf records what the node did.
func (r *row) didf(format string, a ...any) { r.did = append(r.did, fmt.Sprintf(format, a...)) }

// failf records an assertion that failed; the row is still printed.
func (r *row) failf(format string, a ...any) {
	r.failures = append(r.failures, fmt.Sprintf(format, a...))
}

// suite runs attacks against one node, one row each.
type suite struct {
	t    *testing.T
	n    *node
	rows []*row
}

// attack runs fn as a subtest and records its row: the ingest's CPU and memory during it, the
// /metrics growth, and what the victim calls lost. The row is recorded even if fn stops the
// subtest; assertions fn records with failf become errors after the row is printed.
func (s *suite) attack(t *testing.T, name string, fn func(t *testing.T, r *row)) {
	t.Run(name, func(t *testing.T) {
		n := s.n
		r := &row{attack: name}
		u0 := n.ing.usage()
		r.metrics[0], r.series[0] = n.metrics()
		legs0 := n.victimLegs()
		gaps0 := n.victimGaps()
		t0 := time.Now()
		defer func() {
			r.took = time.Since(t0)
			u1 := n.ing.usage()
			r.cpu, r.rssDelta, r.peak, r.peakUp = u1.cpu-u0.cpu, u1.rss-u0.rss, u1.peak, u1.peak-u0.peak
			r.metrics[1], r.series[1] = n.metrics()
			s.victims(r, legs0, gaps0)
			if ok, why := n.alive(); !ok {
				r.alive = why
				r.failf("node not alive: %s", why)
			}
			s.rows = append(s.rows, r)
			t.Log(strings.Join(header(), " | "))
			t.Log(strings.Join(r.cells(), " | "))
			for _, f := range r.failures {
				t.Errorf("%s: %s", name, f)
			}
		}()
		fn(t, r)
	})
}

// victims waits until every remaining victim leg has moved on by half a second of audio (or 15 s
// have passed) and records what they lost since legs0 and gaps0.
func (s *suite) victims(r *row, legs0 []legState, gaps0 map[string]int) {
	n := s.n
	before := map[string]legState{}
	for _, l := range legs0 {
		before[l.key] = l
	}
	var legs []legState
	eventually(15*time.Second, func() bool {
		legs = n.victimLegs()
		for _, l := range legs {
			if l.max < before[l.key].max+25 {
				return false
			}
		}
		return true
	})
	holes := 0
	for _, l := range legs {
		b, ok := before[l.key]
		if !ok {
			continue
		}
		holes += l.holes - b.holes
		if l.max < b.max+25 {
			r.stalled = append(r.stalled, fmt.Sprintf("%s stalled at %d", l.key, l.max))
		}
	}
	r.gaps = map[string]int{}
	gapped := 0
	for cause, c := range n.victimGaps() {
		if d := c - gaps0[cause]; d > 0 {
			r.gaps[cause] = d
			gapped += d
		}
	}
	r.lost = max(holes, gapped)
	if r.lost > 0 || len(r.stalled) > 0 {
		r.failf("victim calls lost %d frames (gaps by cause %v) %s", r.lost, r.gaps, strings.Join(r.stalled, ", "))
	}
}

func header() []string {
	return []string{"attack", "what the node did", "ingest CPU", "ingest RSS Δ (peak)", "/metrics (series)", "frames of the attacked call", "victims' frames lost", "verdict"}
}

func (r *row) cells() []string {
	lost := fmt.Sprint(r.lost)
	if len(r.gaps) > 0 {
		var cs []string
		for c, v := range r.gaps {
			cs = append(cs, fmt.Sprintf("%s %d", c, v))
		}
		sort.Strings(cs)
		lost += " (" + strings.Join(cs, ", ") + ")"
	}
	if len(r.stalled) > 0 {
		lost += "; " + strings.Join(r.stalled, ", ")
	}
	frames := r.frames
	if frames == "" {
		frames = "–"
	}
	verdict := "ok"
	if len(r.failures) > 0 {
		verdict = "**FAIL**: " + strings.Join(r.failures, "; ")
	}
	did := strings.Join(r.did, "; ")
	if r.alive != "" {
		did += "; " + r.alive
	}
	return []string{
		r.attack,
		did,
		fmt.Sprintf("%.2f s in %.1f s", r.cpu.Seconds(), r.took.Seconds()),
		fmt.Sprintf("%+.1f MB (%.0f MB%s)", float64(r.rssDelta)/(1<<20), float64(r.peak)/(1<<20), peakUp(r.peakUp)),
		fmt.Sprintf("%s → %s", metricsCell(r.metrics[0], r.series[0]), metricsCell(r.metrics[1], r.series[1])),
		frames,
		lost,
		verdict,
	}
}

// table renders the rows as a markdown table.
func (s *suite) table() string {
	var b strings.Builder
	line := func(cells []string) {
		for i := range cells {
			cells[i] = strings.ReplaceAll(cells[i], "|", `\|`)
		}
		b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
	}
	h := header()
	line(h)
	sep := make([]string, len(h))
	for i := range sep {
		sep[i] = "---"
	}
	b.WriteString("|" + strings.Join(sep, "|") + "|\n")
	for _, r := range s.rows {
		line(r.cells())
	}
	return b.String()
}

// report logs the table and writes it to $CALLROUTER_HOSTILE_REPORT if set.
func (s *suite) report(t *testing.T, intro string) {
	tab := s.table()
	t.Logf("hostile-input table:\n%s", tab)
	if path := os.Getenv(EnvReport); path != "" {
		if err := os.WriteFile(path, []byte(intro+"\n\n"+tab), 0o644); err != nil {
			t.Errorf("writing %s: %v", path, err)
		}
	}
}

func metricsCell(size, series int) string {
	if size < 0 {
		return "no answer"
	}
	return fmt.Sprintf("%.1f KB (%d)", float64(size)/1024, series)
}

func peakUp(b int64) string {
	if b <= 0 {
		return ""
	}
	return fmt.Sprintf(", +%.0f", float64(b)/(1<<20))
}
