package ingest

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// BenchmarkSendFrames measures ingest's cost per frame as the load test meets it: many placed
// two-leg G.711 calls with warm 5 s rings, one frame per leg and call in turn (the tester's
// order), so each call's state has gone cold in the cache by its next frame. "bus" publishes to
// an embedded nats-server with a subscriber draining audio.>; "ring" is the same path with the
// node paused (Node.Pause), which skips only nc.Publish: ingest's own work.
//
// ns/op (per frame) is wall time, which on a shared machine follows the neighbours; cpu-ns/frame
// is the CPU time of the sending thread alone (Linux): Call.Send and, in "bus", nats.go's
// Publish into its buffer, not the server's or the subscriber's work (nor their allocations,
// which B/op counts in "bus").
//
//	go test -run '^$' -bench SendFrames -count 6 ./internal/ingest/
func BenchmarkSendFrames(b *testing.B) {
	for _, calls := range []int{1000, 2500} {
		for _, mode := range []string{"ring", "bus"} {
			b.Run(fmt.Sprintf("calls=%d/%s", calls, mode), func(b *testing.B) {
				benchSendFrames(b, calls, mode == "bus")
			})
		}
	}
}

func benchSendFrames(b *testing.B, calls int, bus bool) {
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		b.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		b.Fatal("nats-server did not start")
	}
	b.Cleanup(srv.Shutdown)
	connect := func() *nats.Conn {
		nc, err := nats.Connect(srv.ClientURL())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(nc.Close)
		return nc
	}
	var received atomic.Int64
	if bus {
		sub, err := connect().Subscribe("audio.>", func(*nats.Msg) { received.Add(1) })
		if err != nil {
			b.Fatal(err)
		}
		_ = sub.SetPendingLimits(-1, -1)
	}
	cfg := DefaultConfig()
	cfg.ID = "bench"
	n, err := New(cfg, Deps{NC: connect(), Log: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	cs := make([]*Call, calls)
	for i := range cs {
		spec := session.Spec{ID: session.ID{Tenant: "acme", Call: fmt.Sprintf("call-%05d", i)}, Legs: []session.Leg{
			{Index: 0, Name: "caller", Codec: frame.CodecPCMU, Rate: 8000}, {Index: 1, Name: "agent", Codec: frame.CodecPCMU, Rate: 8000}}}
		cs[i] = n.newCall(spec)
		cs[i].setPlacement(1, []wire.Placement{{Pool: "default", Worker: "w1"}})
	}
	b.Cleanup(func() {
		n.Pause(true) // no last frames and events to publish
		for _, c := range cs {
			c.End("bench over")
		}
	})
	payload := make([]byte, 160)
	send := func(c *Call, leg int) {
		if err := c.Send(leg, payload, 0); err != nil {
			b.Fatal(err)
		}
	}
	// Every ring slot written once, as in a call older than its ring (paused: the bus need not
	// carry the warm-up).
	n.Pause(true)
	for range int(cfg.Ring/frame.Duration) + 1 {
		for _, c := range cs {
			send(c, 0)
			send(c, 1)
		}
	}
	n.Pause(!bus)
	b.ReportAllocs()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cpu0, cpuOK := threadCPU()
	i, frames := 0, 0
	for b.Loop() {
		send(cs[i>>1], i&1)
		if i++; i == 2*calls {
			i = 0
		}
		frames++
	}
	// The thread's CPU time is kept in ticks of a few milliseconds: a short run (-benchtime 1x)
	// reports none.
	if cpu1, ok := threadCPU(); ok && cpuOK && cpu1-cpu0 >= 100*time.Millisecond {
		b.ReportMetric(float64(cpu1-cpu0)/float64(frames), "cpu-ns/frame")
	}
}

// TestSendAllocatesNothing pins the frame path, ring and publish included, at no allocation once
// the ring's slots have their size.
func TestSendAllocatesNothing(t *testing.T) {
	n, _ := testNode(t, 0)
	c := pcmCall(t, n, 10)
	payload := make([]byte, 320)
	if a := testing.AllocsPerRun(500, func() {
		if err := c.Send(1, payload, 0); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Errorf("Call.Send allocates %v times a frame", a)
	}
}
