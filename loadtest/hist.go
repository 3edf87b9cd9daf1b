package loadtest

import (
	"math"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/callrouter/callrouter/loadtest/account"
)

// histDigits is the precision of the load tester's own histograms.
const histDigits = 3

func newHist() *hdr.Histogram { return hdr.New(account.HistMin, account.HistMax, histDigits) }

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
