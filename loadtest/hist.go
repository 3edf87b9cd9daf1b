package loadtest

import (
	"math"
	"sync"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// Histogram bounds: latencies are recorded in microseconds from 1 µs to 60 s with three
// significant digits.
const (
	histMin    = 1
	histMax    = 60_000_000
	histDigits = 3
)

func newHist() *hdr.Histogram { return hdr.New(histMin, histMax, histDigits) }

// recordUS records d in microseconds, clamped into the histogram's range.
func recordUS(h *hdr.Histogram, d time.Duration) {
	us := d.Microseconds()
	if us < histMin {
		us = histMin
	} else if us > histMax {
		us = histMax
	}
	_ = h.RecordValue(us)
}

// Percentiles summarizes a latency histogram in milliseconds.
type Percentiles struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p99_9_ms"`
	Max   float64 `json:"max_ms"`
}

func summarize(h *hdr.Histogram) Percentiles {
	ms := func(v int64) float64 { return math.Round(float64(v)) / 1000 }
	if h == nil || h.TotalCount() == 0 {
		return Percentiles{}
	}
	return Percentiles{Count: h.TotalCount(), P50: ms(h.ValueAtQuantile(50)), P90: ms(h.ValueAtQuantile(90)),
		P99: ms(h.ValueAtQuantile(99)), P999: ms(h.ValueAtQuantile(99.9)), Max: ms(h.Max())}
}

// CurvePoint is one point of a latency percentile curve.
type CurvePoint struct {
	Percentile float64 `json:"percentile"`
	MS         float64 `json:"ms"`
}

// curve returns the latency at percentiles spaced evenly on the log scale of 1/(1-p).
func curve(h *hdr.Histogram) []CurvePoint {
	if h == nil || h.TotalCount() == 0 {
		return nil
	}
	var out []CurvePoint
	for _, p := range []float64{0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 99.999, 100} {
		out = append(out, CurvePoint{Percentile: p, MS: float64(h.ValueAtQuantile(p)) / 1000})
	}
	return out
}

// shardedHist spreads concurrent recorders over a few mutex-guarded histograms.
type shardedHist struct {
	shards []histShard
}

type histShard struct {
	mu sync.Mutex
	h  *hdr.Histogram
	_  [48]byte // keep shards on separate cache lines
}

func newShardedHist(n int) *shardedHist {
	s := &shardedHist{shards: make([]histShard, n)}
	for i := range s.shards {
		s.shards[i].h = newHist()
	}
	return s
}

func (s *shardedHist) record(key uint32, d time.Duration) {
	sh := &s.shards[key%uint32(len(s.shards))]
	sh.mu.Lock()
	recordUS(sh.h, d)
	sh.mu.Unlock()
}

func (s *shardedHist) merge(h *hdr.Histogram) {
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		h.Merge(sh.h)
		sh.mu.Unlock()
	}
}

// snapshot returns a merged copy.
func (s *shardedHist) snapshot() *hdr.Histogram {
	h := newHist()
	s.merge(h)
	return h
}
