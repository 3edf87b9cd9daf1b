package inproc

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/natsauth"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/callrouter/callrouter/loadtest/account"
	"github.com/callrouter/callrouter/loadtest/probe"
)

// BenchmarkFrameCPU measures what a frame costs the one-process stack at a load test's shape:
// calls two-leg G.711 calls on ingest, two workers running accounting and the probe, an embedded
// nats-server, every leg sending a frame each 20 ms in real time, the calls' phases spread over
// the period as the load tester's pacer spreads them (a 1 ms tick). After a second of warm-up it
// counts, over 8 s: the process's CPU per frame received (cpu-ns/frame: sender, ingest, NATS,
// workers, GC, everything), heap allocations per frame and garbage collections per second. The
// sender is a loop over ingest's Call.Send, far cheaper than the load tester's. Run with
// -benchtime 1x; on a shared machine compare runs alternating, by their medians.
//
// ingests > 1 spreads the calls over that many ingest nodes, each with its own NATS connection
// (a supported deployment, here in one process): nats-server caches the subscriptions matching
// a subject per publishing connection, up to 512 subjects, and one ingest publishing both legs
// of 1,000 calls (2,000 subjects) misses that cache on nearly every frame; 4 ingests of 250
// calls (500 subjects each) hit it. conns > 1 is the same fix inside one ingest node: it
// logs in with that many connections (-nats-publish-conns) and publishes the calls' frames on
// the conns-1 besides its own; conns 0 is its default, automatic (one more connection per
// ingest.CallsPerPublishConn calls, opened as the calls start).
// docs/loadtest.md, "The server's subject cache".
func BenchmarkFrameCPU(b *testing.B) {
	for _, tc := range []struct{ calls, ingests, conns int }{{500, 1, 1}, {1000, 1, 1}, {1000, 2, 1}, {1000, 4, 1}, {1000, 1, 4}, {1000, 1, 0}, {2500, 1, 1}, {2500, 1, 10}, {2500, 1, 0}} {
		name := fmt.Sprintf("calls=%d/ingests=%d", tc.calls, tc.ingests)
		if tc.conns > 1 {
			name = fmt.Sprintf("calls=%d/conns=%d", tc.calls, tc.conns)
		} else if tc.conns == 0 { // ingest's default: -nats-publish-conns 0, automatic
			name = fmt.Sprintf("calls=%d/conns=auto", tc.calls)
		}
		b.Run(name, func(b *testing.B) {
			for range b.N {
				benchFrameCPU(b, tc.calls, tc.ingests, tc.conns, time.Second, 8*time.Second)
			}
		})
	}
}

func benchFrameCPU(b *testing.B, calls, ingests, conns int, warm, window time.Duration) {
	const tenant = "cpu"
	wc := worker.DefaultConfig()
	wc.Processors = []string{"accounting", probe.ProcessorName}
	wc.Capacity = calls
	// A machine starved by other work delays frames: measure it rather than drop them as stale.
	// The queue bounds stay the defaults: larger channels would hold more heap and so change how
	// often the collector runs. A worker's backpressure drops fail the run.
	wc.MaxFrameAge, wc.LagThreshold = time.Minute, time.Minute
	ic := ingest.DefaultConfig()
	ic.ID, ic.PublishConns = "ingest-1", conns
	st, err := stack.Start(stack.Config{Workers: 2, Worker: wc, Ingest: ic, Log: testLog(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	if err := waitWorkers(context.Background(), st, 2); err != nil {
		b.Fatal(err)
	}
	sink := &countSink{}
	detach, err := probe.Attach(tenant, sink)
	if err != nil {
		b.Fatal(err)
	}
	defer detach()
	// More ingest nodes than the stack's one, each on its own NATS connection, take the calls in
	// turn: nats-server keeps a cache of subject matches per publishing connection (512
	// subjects), which one ingest publishing every leg of 1,000 calls overflows.
	nodes := []*ingest.Node{st.Ingest}
	ctx, cancel := context.WithCancel(context.Background())
	var nodesDone sync.WaitGroup
	defer func() { cancel(); nodesDone.Wait() }()
	for i := 2; i <= ingests; i++ {
		id := "ingest-" + strconv.Itoa(i)
		nc, err := st.Connect(natsauth.RoleIngest, "", id)
		if err != nil {
			b.Fatal(err)
		}
		ic := ingest.DefaultConfig()
		ic.ID = id
		n, err := ingest.New(ic, ingest.Deps{NC: nc, Log: testLog(b)})
		if err != nil {
			b.Fatal(err)
		}
		done, err := n.Start(ctx) // no call starts before the node serves
		if err != nil {
			b.Fatalf("%s: %v", id, err)
		}
		nodesDone.Add(1)
		go func() { defer nodesDone.Done(); <-done }()
		nodes = append(nodes, n)
	}
	cs := make([]*ingest.Call, calls)
	for i := range cs {
		cs[i], err = startCallRetrying(nodes[i%len(nodes)], session.Spec{ID: session.ID{Tenant: tenant, Call: "c-" + strconv.Itoa(i)},
			Legs: []session.Leg{{Index: 0, Name: "a", Codec: frame.CodecPCMU, Rate: 8000}, {Index: 1, Name: "b", Codec: frame.CodecPCMU, Rate: 8000}}})
		if err != nil {
			b.Fatal(err)
		}
	}
	defer func() {
		for _, c := range cs {
			c.End("hangup")
		}
	}()

	// Two senders, as the pacer has a shard per core; call i is due at i mod 20 ms of each period.
	payload := bytes.Repeat([]byte{0xff}, 160)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent atomic.Int64
	var sendErr atomic.Value
	start := time.Now()
	for s := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(time.Millisecond)
			defer t.Stop()
			next := 0 // the next ms slot of the period to send
			for {
				select {
				case <-stop:
					return
				case now := <-t.C:
					for due := int(now.Sub(start) / time.Millisecond); next <= due; next++ {
						for i := s + 2*(next%20); i < calls; i += 40 {
							for leg := range 2 {
								if err := cs[i].Send(leg, payload, 0); err != nil {
									sendErr.Store(err)
								}
							}
							sent.Add(2)
						}
					}
				}
			}
		}()
	}
	time.Sleep(warm)
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	cpu0, got0, t0 := cpuTime(), sink.frames.Load(), time.Now()
	time.Sleep(window)
	cpu1, got1, t1 := cpuTime(), sink.frames.Load(), time.Now()
	runtime.ReadMemStats(&ms1)
	close(stop)
	wg.Wait()
	if err, _ := sendErr.Load().(error); err != nil {
		b.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for sink.frames.Load()+sink.lost.Load() < sent.Load() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got, lost := sink.frames.Load(), sink.lost.Load(); got != sent.Load() || lost != 0 {
		b.Fatalf("sent %d frames, %d received, %d lost", sent.Load(), got, lost)
	}
	n := float64(got1 - got0)
	b.ReportMetric(float64(cpu1-cpu0)/n, "cpu-ns/frame")
	b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/n, "allocs/frame")
	b.ReportMetric(float64(ms1.NumGC-ms0.NumGC)/t1.Sub(t0).Seconds(), "gc/s")
	b.ReportMetric(n/t1.Sub(t0).Seconds(), "frames/s")
}

// startCallRetrying starts a call on n, retrying for a few seconds while n is not ready yet.
func startCallRetrying(n *ingest.Node, spec session.Spec) (*ingest.Call, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := n.StartCall(context.Background(), spec)
		if err == nil || time.Now().After(deadline) {
			return c, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// countSink counts what the probe reports.
type countSink struct{ frames, lost atomic.Int64 }

func (s *countSink) Frame(uint32, time.Duration, time.Time) { s.frames.Add(1) }
func (s *countSink) Loss(_ uint32, n int64, _ time.Time)    { s.lost.Add(n) }
func (s *countSink) Report(string, string, []account.Leg)   {}

// cpuTime returns the CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
