package worker_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/router"
	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/rs/zerolog"
)

// BenchmarkSetup is call setup as the load tester measures it (ingest StartCall → placement
// accepted) for setupCalls two-leg calls on a real one-process stack (embedded nats-server, a
// router with its default 64 placements in flight, 2 workers, one ingest). The workers reach the
// server through a proxy that delays each direction by setupDelay: on the starved box of the
// 2,500-call load test, the time the worker's connection takes to get through the frames queued
// ahead of what the server sends it (offers reach the worker, and its answers the router, no
// sooner; the worker no longer adds a flush's round trip of its own). burst starts the calls all
// at once, paced at setupRate a second (the load tester's -ramp); loaded is paced while
// setupLoadCalls calls already set up publish a frame per leg every 20 ms, as the load tester's
// calls do (their frames go on the ingest's extra publishing connections; its own carries the
// placement requests). One op is one such start; p50/p99 are over every call of every op.
// serial sets offers up one at a time per worker (as before offers.go), concurrent as the worker
// does now. Alternate A/B pairs, e.g.
//
//	go test -c -o /tmp/w.test ./internal/worker/ && cd internal/worker &&
//	for i in 1 2 3 4 5; do for m in serial concurrent; do
//	  /tmp/w.test -test.run '^$' -test.bench "Setup/burst/$m\$" -test.benchtime 3x; done; done
func BenchmarkSetup(b *testing.B) {
	for _, shape := range []struct {
		name       string
		rate, load int
	}{{"burst", 0, 0}, {"paced", setupRate, 0}, {"loaded", setupRate, setupLoadCalls}} {
		for _, mode := range []struct {
			name string
			n    int
		}{{"serial", 1}, {"concurrent", 64}} {
			if shape.load > 0 && mode.n == 1 {
				continue // one offer at a time behind 100,000 frames a second: minutes, and no longer the worker's way
			}
			b.Run(shape.name+"/"+mode.name, func(b *testing.B) { benchSetup(b, mode.n, shape.rate, shape.load) })
		}
	}
}

const (
	setupCalls = 500                  // calls started in one op
	setupRate  = 500                  // calls started per second when paced
	setupDelay = 2 * time.Millisecond // each way between a worker and the server
	// calls publishing frames through a loaded op: 100,000 frames a second (the load test's
	// 2,500 calls send 250,000), on the ingest's extra publishing connections, 200 calls
	// (ingest.CallsPerPublishConn) each
	setupLoadCalls = 1000
)

func benchSetup(b *testing.B, concurrency, rate, load int) {
	defer worker.SetOfferConcurrency(worker.SetOfferConcurrency(concurrency))
	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	proxy := startDelayProxy(b, strings.TrimPrefix(srv.URL(), "nats://"), setupDelay)
	defer proxy.close()
	wc := worker.DefaultConfig()
	wc.Capacity = setupCalls + load
	wc.HeartbeatInterval = 100 * time.Millisecond
	rc := router.DefaultConfig()
	rc.HeartbeatInterval = 100 * time.Millisecond
	rc.OfferTimeout = 5 * time.Second // a slow setup is measured, not refused
	ic := ingest.DefaultConfig()
	ic.HeartbeatInterval = 100 * time.Millisecond
	ic.PlaceTimeout = 10 * time.Second
	ic.DrainTimeout = time.Second
	s, err := stack.Start(stack.Config{NATSURL: srv.URL(), Workers: 2, Worker: wc, Router: rc, Ingest: ic, Log: zerolog.Nop(),
		URLFor: func(name string) string {
			if strings.HasPrefix(name, "worker ") {
				return "nats://" + proxy.addr
			}
			return ""
		}})
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := s.Close(); err != nil {
			b.Error(err)
		}
	}()
	// stack.Start has returned with the ingest node ready (ingest.Node.Ready): the calls below
	// have their frames on its extra publishing connections from the first one.
	eventually(b, 10*time.Second, "the router to see the workers", func() bool {
		return gauge(b, s.Registry(), "callrouter_router_workers", nil) >= 2
	})
	stopLoad := startFrames(b, s, load)
	defer stopLoad()
	var times []time.Duration
	var mu sync.Mutex
	b.ResetTimer()
	for i := range b.N {
		var wg sync.WaitGroup
		calls := make([]*ingest.Call, setupCalls)
		t0 := time.Now()
		for j := range setupCalls {
			if rate > 0 {
				time.Sleep(time.Until(t0.Add(time.Duration(j) * time.Second / time.Duration(rate))))
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				start := time.Now()
				c, err := s.Ingest.StartCall(context.Background(), spec(fmt.Sprintf("setup-%d-%d", i, j)))
				if err != nil {
					b.Errorf("start: %v", err)
					return
				}
				d := time.Since(start)
				calls[j] = c
				mu.Lock()
				times = append(times, d)
				mu.Unlock()
			}()
		}
		wg.Wait()
		b.StopTimer()
		for _, c := range calls {
			if c != nil {
				c.End("done")
			}
		}
		eventually(b, 30*time.Second, "the calls to end at the workers", func() bool {
			return s.Workers[0].Calls()+s.Workers[1].Calls() == load
		})
		b.StartTimer()
	}
	b.StopTimer()
	// An offer the router gave up on (after 5 s) shows in p99; say so rather than leave it to guess.
	b.ReportMetric(metric(b, s.Registry(), "callrouter_router_offers_total", map[string]string{"result": "error"}), "offer-timeouts")
	if len(times) == 0 {
		return
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	q := func(p float64) float64 { return float64(times[int(p*float64(len(times)-1))]) / 1e6 }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
}

// startFrames sets n calls up and publishes a frame on each of their legs every 20 ms until the
// returned stop, which ends them.
func startFrames(b *testing.B, s *stack.Stack, n int) (stop func()) {
	calls := make([]*ingest.Call, 0, n)
	for i := range n {
		c, err := s.Ingest.StartCall(context.Background(), spec(fmt.Sprintf("load-%d", i)))
		if err != nil {
			b.Fatalf("load call: %v", err)
		}
		calls = append(calls, c)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	if n > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			payload := make([]byte, 160)
			t := time.NewTicker(20 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case <-t.C:
				}
				for _, c := range calls {
					_ = c.Send(0, payload, 0)
					_ = c.Send(1, payload, 0)
				}
			}
		}()
	}
	return func() {
		close(done)
		wg.Wait()
		for _, c := range calls {
			c.End("done")
		}
	}
}

// delayProxy forwards TCP connections to a server, delaying every chunk by a fixed time in each
// direction while keeping their order.
type delayProxy struct {
	addr  string
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

func startDelayProxy(b *testing.B, target string, delay time.Duration) *delayProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	p := &delayProxy{addr: ln.Addr().String(), ln: ln}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, in, out)
			p.mu.Unlock()
			p.wg.Add(2)
			go func() { defer p.wg.Done(); delayCopy(out, in, delay) }()
			go func() { defer p.wg.Done(); delayCopy(in, out, delay) }()
		}
	}()
	return p
}

func (p *delayProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// delayCopy copies from src to dst, each chunk delay after it was read; it closes both once
// either side fails.
func delayCopy(dst, src net.Conn, delay time.Duration) {
	type chunk struct {
		due  time.Time
		data []byte
	}
	q := make(chan chunk, 4096)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for c := range q {
			time.Sleep(time.Until(c.due))
			if _, err := dst.Write(c.data); err != nil {
				src.Close()
				for range q { // let the reader finish
				}
				return
			}
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			q <- chunk{time.Now().Add(delay), append([]byte(nil), buf[:n]...)}
		}
		if err != nil {
			if err != io.EOF {
				dst.Close()
			}
			break
		}
	}
	close(q)
	<-done
	dst.Close()
}
