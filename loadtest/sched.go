package loadtest

import (
	"math"
	"runtime/metrics"
)

// schedLatencies is the Go runtime's histogram of how long goroutines waited runnable before
// they ran: on a machine short of CPU, the queueing that makes a frame's latency tail. It is the
// tester's own process: with the in-process stack that is everything (tester, nats-server,
// router, workers, ingest), against a remote callrouter only the tester.
const schedLatencies = "/sched/latencies:seconds"

// schedSample is one reading of schedLatencies.
type schedSample struct {
	counts  []uint64
	buckets []float64 // len(counts)+1 boundaries, seconds
}

func sampleSched() schedSample {
	s := []metrics.Sample{{Name: schedLatencies}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64Histogram {
		return schedSample{}
	}
	h := s[0].Value.Float64Histogram()
	return schedSample{counts: append([]uint64(nil), h.Counts...), buckets: h.Buckets}
}

// waitsSince returns the p50 and p99, in ms, of the waits counted between before and s (the
// upper bound of the bucket each falls in), zero when there were none.
func (s schedSample) waitsSince(before schedSample) [2]float64 {
	if len(s.counts) == 0 || len(before.counts) != len(s.counts) {
		return [2]float64{}
	}
	diff := make([]uint64, len(s.counts))
	var total uint64
	for i, c := range s.counts {
		if c > before.counts[i] { // counts only grow; readings out of order count nothing
			diff[i] = c - before.counts[i]
		}
		total += diff[i]
	}
	if total == 0 {
		return [2]float64{}
	}
	var out [2]float64
	for k, q := range []float64{0.50, 0.99} {
		rank := uint64(math.Ceil(q * float64(total)))
		var cum uint64
		for i, d := range diff {
			cum += d
			if cum >= rank {
				upper := s.buckets[i+1]
				if math.IsInf(upper, 1) {
					upper = s.buckets[i]
				}
				out[k] = round3(upper * 1000)
				break
			}
		}
	}
	return out
}
