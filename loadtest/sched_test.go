package loadtest

import (
	"math"
	"testing"
)

// TestSchedWaitsSince: the percentiles are of the waits counted between two readings (the
// earlier ones left out), each the upper bound of its bucket, the open last bucket its lower.
func TestSchedWaitsSince(t *testing.T) {
	buckets := []float64{0, 0.0001, 0.001, 0.01, math.Inf(1)}
	before := schedSample{counts: []uint64{1000, 0, 0, 500}, buckets: buckets}
	// 98 waits under 100 µs, 1 under 1 ms, 1 under 10 ms since before.
	after := schedSample{counts: []uint64{1098, 1, 1, 500}, buckets: buckets}
	if got := after.waitsSince(before); got != [2]float64{0.1, 1} {
		t.Errorf("p50/p99 = %v ms, want [0.1 1]", got)
	}
	// Two waits past the last finite bound: the p99 is that bound.
	after = schedSample{counts: []uint64{1000, 0, 0, 502}, buckets: buckets}
	if got := after.waitsSince(before); got != [2]float64{10, 10} {
		t.Errorf("open bucket: p50/p99 = %v ms, want [10 10]", got)
	}
	if got := before.waitsSince(before); got != [2]float64{} {
		t.Errorf("no waits: %v, want zeros", got)
	}
	s0 := sampleSched()
	if got := sampleSched().waitsSince(s0); got[0] < 0 || got[1] < got[0] {
		t.Errorf("the runtime's own histogram: %v", got)
	}
}
