package stack

import (
	"context"
	"testing"
	"time"
)

func TestFiftyCallsEveryFrameInOrder(t *testing.T) {
	recorded.reset()
	// This is about every frame arriving once and in order, not about overload: on a 2-core
	// machine starved by the race detector and other packages' tests, 50 two-leg calls at full
	// rate lag past the 300 ms threshold, and lagging workers rightly refuse the calls ("worker
	// is lagging") and drop frames older than 2 s as stale. The overload paths have tests of
	// their own.
	wc := testWorkerConfig()
	wc.LagThreshold = time.Minute
	wc.MaxFrameAge = time.Minute
	s, err := Start(Config{Workers: 3, Worker: wc, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	eventually(t, 10*time.Second, "3 workers visible to the router", func() bool { return len(s.Routers[0].Workers()) == 3 })
	const calls, frames = 50, 100
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i, err := range playCalls(ctx, t, s, tone(t, frames), "fifty", calls, frames) {
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	eventually(t, 10*time.Second, "every worker to release its calls", func() bool {
		for _, w := range s.Workers {
			if w.Calls() != 0 {
				return false
			}
		}
		return true
	})
	checkComplete(t, "fifty", calls, 2, frames)
}
