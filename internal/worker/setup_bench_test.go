package worker_test

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/router"
	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/rs/zerolog"
)

// BenchmarkSetup is call setup as the load tester measures it (ingest StartCall → placement
// accepted) for setupBurst two-leg calls on a real one-process stack (embedded nats-server, a
// router with its default 64 placements in flight, 2 workers, one ingest), while setupBusy calls
// stream frames to the workers, so each offer's flush waits behind deliveries. burst starts the
// calls all at once (offers come faster than a worker's flush round trips, as on the starved box
// of the 2,500-call load test); paced starts setupRate a second (a box with room to spare). One op
// is one burst; p50/p99 are over every call of every op. serial sets offers up one at a time per
// worker (as before offers.go), concurrent as the worker does now. Alternate A/B pairs:
//
//	go test -run '^$' -bench 'Setup' -benchtime 3x -count 5 ./internal/worker/
func BenchmarkSetup(b *testing.B) {
	for _, shape := range []struct {
		name string
		rate int
	}{{"burst", 0}, {"paced", setupRate}} {
		for _, mode := range []struct {
			name string
			n    int
		}{{"serial", 1}, {"concurrent", 64}} {
			b.Run(shape.name+"/"+mode.name, func(b *testing.B) { benchSetup(b, mode.n, shape.rate) })
		}
	}
}

const (
	setupBurst = 500 // calls started in one op
	setupRate  = 500 // calls started per second when paced (the load tester's -ramp)
	setupBusy  = 200 // calls streaming throughout
)

func benchSetup(b *testing.B, concurrency, rate int) {
	defer worker.SetOfferConcurrency(worker.SetOfferConcurrency(concurrency))
	wc := worker.DefaultConfig()
	wc.Capacity = setupBurst + setupBusy
	wc.IdleTimeout = 10 * time.Second
	wc.HeartbeatInterval = 100 * time.Millisecond
	rc := router.DefaultConfig()
	rc.HeartbeatInterval = 100 * time.Millisecond
	rc.OfferTimeout = 5 * time.Second // a slow setup is measured, not refused
	ic := ingest.DefaultConfig()
	ic.HeartbeatInterval = 100 * time.Millisecond
	ic.PlaceTimeout = 10 * time.Second
	ic.DrainTimeout = time.Second
	s, err := stack.Start(stack.Config{Workers: 2, Worker: wc, Router: rc, Ingest: ic, Log: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := s.Close(); err != nil {
			b.Error(err)
		}
	}()
	eventually(b, 10*time.Second, "the router to see the workers", func() bool {
		return gauge(b, s.Registry(), "callrouter_router_workers", nil) >= 2
	})
	ctx := context.Background()
	start := func(name string) (*ingest.Call, time.Duration) {
		t0 := time.Now()
		c, err := s.Ingest.StartCall(ctx, spec(name))
		if err != nil {
			b.Errorf("start %s: %v", name, err)
			return nil, 0
		}
		return c, time.Since(t0)
	}
	// The busy calls: every leg sends a frame each 20 ms until the benchmark ends.
	busy := make([]*ingest.Call, 0, setupBusy)
	for i := range setupBusy {
		if c, _ := start(fmt.Sprintf("busy-%d", i)); c != nil {
			busy = append(busy, c)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		payload := make([]byte, 160)
		t := time.NewTicker(frame.Duration)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			for _, c := range busy {
				for leg := range 2 {
					_ = c.Send(leg, payload, 0)
				}
			}
		}
	}()
	defer func() {
		close(stop)
		wg.Wait()
		for _, c := range busy {
			c.End("done")
		}
	}()

	var times []time.Duration
	var mu sync.Mutex
	b.ResetTimer()
	for i := range b.N {
		var calls sync.WaitGroup
		started := make([]*ingest.Call, setupBurst)
		t0 := time.Now()
		for j := range setupBurst {
			if rate > 0 {
				time.Sleep(time.Until(t0.Add(time.Duration(j) * time.Second / time.Duration(rate))))
			}
			calls.Add(1)
			go func() {
				defer calls.Done()
				c, d := start(fmt.Sprintf("burst-%d-%d", i, j))
				if c == nil {
					return
				}
				started[j] = c
				mu.Lock()
				times = append(times, d)
				mu.Unlock()
			}()
		}
		calls.Wait()
		b.StopTimer()
		for _, c := range started {
			if c != nil {
				c.End("done")
			}
		}
		eventually(b, 30*time.Second, "the burst to end at the workers", func() bool {
			return s.Workers[0].Calls()+s.Workers[1].Calls() <= len(busy)
		})
		b.StartTimer()
	}
	b.StopTimer()
	if len(times) == 0 {
		return
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	q := func(p float64) float64 { return float64(times[int(p*float64(len(times)-1))]) / 1e6 }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
}
