package worker

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// BenchmarkCallFrame is the worker's own part of a live frame, from the call's channel to the
// processors (accounting): the call goroutine's step (parse, order and epoch checks, lag,
// metrics), both legs of a call taken in one turn as at a loaded worker, the calls in turn:
// with thousands of calls each frame meets its call's state cold in the CPU caches. ns/op is
// per frame (cpu-ns/frame: the thread's CPU time, what to compare on a shared machine); no NATS,
// no goroutine switch (the channel's send and receive are in it).
//
// At 2,500 calls the calls' state (a few MB) still fits the CPU's last-level cache; in a load
// test it does not (the server's, nats.go's and ingest's buffers pass through the caches
// between two frames of a call), and each cache line a frame touches is a miss to memory.
// calls=50000 puts the state out of the cache as in a load test; its calls have 16-message
// channels (-pending-msgs 16, -queue-frames 8) so that they fit the machine's memory, which
// changes nothing on the frame path.
func BenchmarkCallFrame(b *testing.B) {
	for _, calls := range []int{1, 2500, 50000} {
		b.Run(fmt.Sprintf("calls=%d", calls), func(b *testing.B) { benchCallFrame(b, calls) })
	}
}

func benchCallFrame(b *testing.B, calls int) {
	cfg := DefaultConfig()
	cfg.ID, cfg.Processors = "w1", []string{"accounting"}
	cfg.FenceAfter = time.Hour // no heartbeat loop runs here: the worker must not fence itself
	if calls > 2500 {
		cfg.PendingMsgs, cfg.QueueFrames = 16, 8
	}
	w, err := New(cfg, Deps{Log: zerolog.Nop(), Registry: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	w.lastTick.Store(w.mono())
	type leg struct {
		c   *call
		m   *nats.Msg
		h   frame.Header
		seq uint32
	}
	legs := make([]leg, 0, 2*calls)
	payload := make([]byte, 160)
	for i := range calls {
		o := &wire.Offer{Call: session.Spec{ID: session.ID{Tenant: "t", Call: "c-" + strconv.Itoa(i)},
			Legs: []session.Leg{{Index: 0, Name: "a", Codec: frame.CodecPCMU, Rate: 8000}, {Index: 1, Name: "b", Codec: frame.CodecPCMU, Rate: 8000}}}, Epoch: 1}
		c := newCall(w, o)
		c.ctlSub = &nats.Subscription{} // not the frames' (nil)
		c.startHandlers()
		for l := range 2 {
			h := frame.Header{Flags: frame.FlagEpochStart, Codec: frame.CodecPCMU, Leg: uint8(l), SampleRate: 8000, Epoch: 1, DurationUS: 20000, PayloadLen: 160}
			legs = append(legs, leg{c: c, m: &nats.Msg{Data: make([]byte, frame.HeaderLen+160)}, h: h})
		}
	}
	// The calls take turns in an order unrelated to where they are in memory, as in a load test
	// (in allocation order the CPU's prefetchers would fetch the next call's state ahead).
	order := rand.New(rand.NewPCG(1, 2)).Perm(calls)
	// Frames of the same leg are 20 ms apart in media time; the benchmark sends them faster, so
	// the capture time follows the worker's clock to keep every frame live and on time.
	runtime.LockOSThread() // for the thread's CPU time, which the machine's other work does not inflate
	defer runtime.UnlockOSThread()
	b.ReportAllocs()
	b.ResetTimer()
	cpu0, haveCPU := threadCPU()
	for i := 0; i < b.N; i += 2 {
		// A call's two legs arrive together and its goroutine takes both in one wake-up.
		pair := legs[2*order[i/2%calls]:][:2]
		now := w.mono()
		for j := range pair {
			l := &pair[j]
			l.h.Seq, l.h.MediaTS, l.h.Capture = l.seq, l.seq*160, w.wall0+now
			if _, err := l.h.MarshalTo(l.m.Data); err != nil {
				b.Fatal(err)
			}
			copy(l.m.Data[frame.HeaderLen:], payload)
			l.c.audio <- l.m
			l.h.Flags = 0
			l.seq++
		}
		c := pair[0].c
		for range pair {
			if r := c.step(<-c.audio); r != "" {
				b.Fatalf("call stopped: %s", r)
			}
		}
	}
	b.StopTimer()
	if cpu1, _ := threadCPU(); haveCPU {
		b.ReportMetric(float64(cpu1-cpu0)/float64(b.N), "cpu-ns/frame")
	}
	for _, l := range legs {
		if got := l.c.legs[l.h.Leg].next.Load(); l.seq > 0 && got != int64(l.seq) {
			b.Fatalf("leg at %d, want %d", got, l.seq)
		}
	}
}
