package stack

import (
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/router"
)

// sendLoop sends a frame on every leg of every call each interval until stop is closed, then
// ends them.
func sendLoop(t *testing.T, calls []*ingest.Call, every time.Duration, stop chan struct{}) *sync.WaitGroup {
	rec := tone(t, 50)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(every)
		defer tk.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				for _, c := range calls {
					c.End("hangup")
				}
				return
			case <-tk.C:
			}
			for _, c := range calls {
				for leg := 0; leg < 2; leg++ {
					_ = c.Send(leg, rec.Frames[leg][i%rec.Len()], 0)
				}
			}
		}
	}()
	return &wg
}

func TestDrainOfHundredCallsTakesSeconds(t *testing.T) {
	recorded.reset()
	cfg := fastConfig(t)
	// Room for every call on the worker that takes them over, plus the offers in flight the
	// router counts against it until its next heartbeat.
	cfg.Worker.Capacity = 200
	// A drain needs no death detection: give the routers 5 s, so that a heartbeat delayed by a
	// loaded machine (the race detector, other packages' tests; at load 25, 1.5 s was not enough)
	// is not taken for a dead worker or ingest, whose calls would then be re-placed with replayed
	// (duplicate) frames; and the workers the same before they fence themselves.
	cfg.Router.Misses = 50
	cfg.Worker.FenceAfter = 5 * time.Second
	// Nor the ingest, whose heartbeat loop starved past the 3 s stranded-after would take itself
	// for one that was away and re-place every call as a failover (with replayed duplicates).
	cfg.Ingest.StrandedAfter = 5 * time.Second
	// On a starved race run (the race detector and eight busy loops on 2 cores) the moves'
	// offers were answered after the router's 1 s offer timeout, and each abandoned offer
	// started its move again: 100 calls took 19 s to over 45 s. With -move-offer-timeout (3 s)
	// they take 2-3 s there and well under a second otherwise. The drain gets a minute (the
	// default 20 s would stop the calls left at its end) and must finish within drainBudget,
	// which a drain that moved nothing, or one call per offer timeout (over 100 s), does not.
	cfg.Worker.DrainTimeout = time.Minute
	// And the production orphan grace (fastConfig's is 1 s): a worker that takes a call is seen
	// holding it before ingest's heartbeat lists it there, which on such a machine can lag by
	// more than a second; the router would release a call it had just placed.
	cfg.Router.OrphanGrace = router.DefaultConfig().OrphanGrace
	// Nor is it about overload: on a machine loaded by the race detector and other tests, 100
	// two-leg calls can lag, which would rightly stop offers, shed calls and drop stale frames.
	cfg.Worker.LagThreshold = time.Minute
	cfg.Worker.MaxFrameAge = time.Minute
	// Nor may a starved worker's call queue overflow: 250 frames are 7.5 s of this test's
	// 60 ms-a-leg traffic, which a worker taking over 100 calls on such a machine has been seen
	// to fall behind by (dropping the oldest as worker_backpressure gaps). Still bounded.
	cfg.Worker.QueueFrames = 2000
	cfg.Worker.PendingMsgs = 2000
	// Nor about idle calls: no frame flows until all 100 calls are placed, which on such a
	// machine can take longer than fastConfig's 1 s idle timeout; the early calls would be
	// reaped and re-placed from the ring (a failover, with its duplicates), not drained.
	cfg.Worker.IdleTimeout = 30 * time.Second
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitWorkers(t, s, 1)
	var calls []*ingest.Call
	for i := 0; i < 100; i++ {
		c, err := s.Ingest.StartCall(t.Context(), tone(t, 1).Spec("acme", "drain-"+strconv.Itoa(i), nil))
		if err != nil {
			t.Fatal(err)
		}
		calls = append(calls, c)
	}
	stop := make(chan struct{})
	// Every 60 ms rather than 20: 100 two-leg calls at full rate are 10,000 frames/s, more than
	// a 2-core machine running the race detector and other packages' tests can carry, and the
	// hand-over does not depend on the rate (the e2e tests drain real processes at full rate).
	wg := sendLoop(t, calls, 60*time.Millisecond, stop)
	if _, err := s.AddWorker("worker-2", cfg.Worker); err != nil {
		t.Fatal(err)
	}
	waitWorkers(t, s, 2)
	time.Sleep(500 * time.Millisecond) // let frames flow before the drain (not an assertion)
	start := time.Now()
	s.Stop(s.Workers[0])
	const drainBudget = 45 * time.Second
	eventually(t, drainBudget, "worker-1 to hand every call over", func() bool { return s.Workers[0].Calls() == 0 })
	took := time.Since(start)
	t.Logf("drained 100 calls in %v", took.Round(time.Millisecond))
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	eventually(t, 10*time.Second, "worker-2 to finish", func() bool { return s.Workers[1].Calls() == 0 })
	recorded.mu.Lock()
	defer recorded.mu.Unlock()
	for i := 0; i < 100; i++ {
		for leg := 0; leg < 2; leg++ {
			k := fmt.Sprintf("acme/drain-%d/%d", i, leg)
			// The two workers process concurrently (the old one may still work through its
			// backlog), so compare the set, not the arrival order.
			got := slices.Clone(recorded.seqs[k])
			slices.Sort(got)
			for j, seq := range got {
				if seq != uint32(j) {
					t.Fatalf("%s: sorted frame %d has seq %d: a gap or a duplicate across the hand-over (%d dups, gaps %v)\n%v", k, j, seq, recorded.dups[k], recorded.gaps[k], recorded.who[k])
				}
			}
			if recorded.dups[k] != 0 || len(recorded.gaps[k]) != 0 {
				t.Errorf("%s: %d dups, gaps %v", k, recorded.dups[k], recorded.gaps[k])
			}
		}
	}
}

func TestLaggingWorkerShedsItsCalls(t *testing.T) {
	cfg := fastConfig(t)
	cfg.Worker.ShedAfter = 300 * time.Millisecond
	cfg.Worker.Capacity = 2
	cfg.Workers = 0
	slowCfg := cfg.Worker
	slowCfg.Processors = append(append([]string{}, cfg.Worker.Processors...), "testslow")
	slowCfg.ProcessorOptions = map[string]proc.Options{"testslow": {"delay": "25ms"}}
	cfg.Worker = slowCfg
	s, err := Start(cfg) // one worker: the slow one
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitWorkers(t, s, 1)
	var calls []*ingest.Call
	for i := 0; i < 2; i++ {
		c, err := s.Ingest.StartCall(t.Context(), tone(t, 1).Spec("acme", "shed-"+strconv.Itoa(i), nil))
		if err != nil {
			t.Fatal(err)
		}
		calls = append(calls, c)
	}
	healthy := fastConfig(t).Worker
	if _, err := s.AddWorker("healthy", healthy); err != nil {
		t.Fatal(err)
	}
	waitWorkers(t, s, 2)
	stop := make(chan struct{})
	wg := sendLoop(t, calls, frame.Duration, stop)
	eventually(t, 20*time.Second, "the lagging worker to shed both calls", func() bool { return s.Workers[0].Calls() == 0 })
	for _, c := range calls {
		if p := c.Placements(); len(p) != 1 || p[0].Worker != "healthy" {
			t.Errorf("%s placed on %v after shedding", c.ID(), p)
		}
	}
	close(stop)
	wg.Wait()
	if got := counter(t, s.Registry(), "callrouter_ingest_replacements_total", map[string]string{"reason": "rebalance"}); got < 2 {
		t.Errorf("%v rebalance re-placements, want 2", got)
	}
}
