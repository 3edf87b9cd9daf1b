package worker_test

import (
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

// A worker whose clock is seconds off ingest's, or is stepped mid-call, processes every frame:
// none is dropped as stale, it does not report itself lagging, sheds nothing and is not fenced.
func TestClockOffset(t *testing.T) {
	for _, tc := range []struct {
		name         string
		offset, step time.Duration // the clock's offset from the start, and the step added mid-call
	}{
		{"ahead 3s", 3 * time.Second, 0},
		{"behind 3s", -3 * time.Second, 0},
		{"stepped forward 3s", 0, 3 * time.Second},
		{"stepped back 3s", 0, -3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var off atomic.Int64
			off.Store(int64(tc.offset))
			wc := workerConfig()
			// A 3 s offset read as lag would be 3 s; a threshold of 1 s leaves a loaded test
			// machine's scheduling delays out of the verdict.
			wc.LagThreshold = time.Second
			// Nor is the fence what this test is about: the harness's 500 ms fenced the worker
			// (its heartbeat loop starved at load 25), and with the pool's only worker excluded
			// from the hand-back the rest of both calls was never processed.
			wc.FenceAfter = 5 * time.Second
			wc.Now = func() time.Time { return time.Now().Add(time.Duration(off.Load())) }
			s := startStack(t, wc, 1)
			nc, err := nats.Connect(s.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			var mu sync.Mutex
			var maxLag float64
			lagging := 0
			sub, err := nc.Subscribe(subjects.Heartbeat(subjects.Worker, "worker-1"), func(m *nats.Msg) {
				var hb wire.WorkerHeartbeat
				if json.Unmarshal(m.Data, &hb) == nil {
					mu.Lock()
					maxLag = max(maxLag, hb.LagMS)
					if hb.Lagging {
						lagging++
					}
					mu.Unlock()
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Unsubscribe()
			if tc.step != 0 {
				go func() {
					time.Sleep(1500 * time.Millisecond)
					off.Add(int64(tc.step))
				}()
			}
			const calls, frames = 2, 150
			play(t, s, "clk", calls, frames)
			waitComplete(t, "clk", calls, frames)
			reg := s.Registry()
			if n := metric(t, reg, "callrouter_worker_dropped_frames_total", nil); n != 0 {
				t.Errorf("%v frames dropped (stale or backpressure)", n)
			}
			if n := metric(t, reg, "callrouter_worker_lost_frames_total", nil); n != 0 {
				t.Errorf("%v frames lost", n)
			}
			eventually(t, 10*time.Second, "both calls to end", func() bool {
				return metric(t, reg, "callrouter_worker_calls_ended_total", map[string]string{"reason": "end"}) == calls
			})
			if n := metric(t, reg, "callrouter_worker_calls_ended_total", nil); n != calls {
				t.Errorf("%v calls ended, want %d (all by their end)", n, calls)
			}
			mu.Lock()
			defer mu.Unlock()
			if lagging != 0 || maxLag >= float64(wc.LagThreshold/time.Millisecond) {
				t.Errorf("worker reported lagging in %d heartbeats, worst lag %.1f ms", lagging, maxLag)
			}
		})
	}
}
