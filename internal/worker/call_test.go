package worker

import (
	"bytes"
	"encoding/json"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// A call's queue and channel hold the same time of audio whatever its number of legs.
func TestCallBoundsScaleWithLegs(t *testing.T) {
	cfg := DefaultConfig()
	w := &Worker{cfg: cfg}
	for _, tc := range []struct{ legs, scale int }{{1, 1}, {2, 1}, {3, 2}, {4, 2}, {session.MaxLegs, session.MaxLegs / 2}} {
		o := &wire.Offer{Call: session.Spec{ID: session.ID{Tenant: "t", Call: "c"}, Legs: make([]session.Leg, tc.legs)}}
		c := newCall(w, o)
		if cap(c.audio) != cfg.PendingMsgs*tc.scale || c.queue != cfg.QueueFrames*tc.scale {
			t.Errorf("%d legs: channel %d, queue %d; want %d, %d", tc.legs, cap(c.audio), c.queue, cfg.PendingMsgs*tc.scale, cfg.QueueFrames*tc.scale)
		}
	}
}

// A call's log events carry its tenant, id and joining epoch, after the worker's own fields,
// and its logger does not copy the worker's context for every call.
func TestCallLoggerFields(t *testing.T) {
	var buf bytes.Buffer
	w := &Worker{cfg: DefaultConfig(), log: zerolog.New(&buf).With().Str("worker", "w1").Logger()}
	o := &wire.Offer{Call: session.Spec{ID: session.ID{Tenant: "t1", Call: "c1"}, Legs: make([]session.Leg, 2)}, Epoch: 7}
	c := newCall(w, o)
	c.log.Info().Str("reason", "x").Msg("call stopped")
	c.Log().Warn().Msg("from a processor")
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if ev["worker"] != "w1" || ev["tenant"] != "t1" || ev["call"] != "c1" || ev["epoch"] != float64(7) {
			t.Errorf("event without the call's fields: %s", line)
		}
	}
	// With() would hold a 500-byte copy of the worker's context per call.
	per := int64(1 << 30)
	for range 5 { // the least of a few tries: another goroutine may allocate meanwhile
		var a, b runtime.MemStats
		runtime.ReadMemStats(&a)
		for range 100 {
			c.log = w.log.Hook(callFields{c})
		}
		runtime.ReadMemStats(&b)
		per = min(per, int64(b.TotalAlloc-a.TotalAlloc)/100)
	}
	if per > 64 {
		t.Errorf("a call's logger allocates %d bytes, want at most 64", per)
	}
}

// An orphan release of a call at epoch 1 (the router's, for an offer it abandoned) and the next
// offer at epoch 2 that keeps this worker race on two NATS handlers. Exactly one wins: the offer
// (the release is then stale and the call goes on at epoch 2) or the release (the call stops and
// the offer is not answered OK for it). Never both, which left ingest publishing epoch 2 to a
// call that had stopped.
func TestReleaseAndAdvanceAreOrdered(t *testing.T) {
	w := &Worker{cfg: DefaultConfig()}
	o := &wire.Offer{Call: session.Spec{ID: session.ID{Tenant: "t", Call: "c"}, Legs: make([]session.Leg, 2)}, Epoch: 1}
	c := newCall(w, o)
	if !c.advance(2) || c.release(1, proc.StopReleased) {
		t.Fatal("a release at epoch 1 after an advance to 2 stopped the call")
	}
	if c.stopReq.Load() != nil || c.state.Load()&stoppingBit != 0 {
		t.Fatal("a stale release marked the call stopping")
	}
	if !c.release(2, proc.StopReleased) || c.advance(3) {
		t.Fatal("an offer advanced a released call")
	}
	for i := range 2000 {
		c := newCall(w, o)
		var advanced, released bool
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); advanced = c.advance(2) }()
		go func() { defer wg.Done(); released = c.release(1, proc.StopReleased) }()
		wg.Wait()
		if advanced == released {
			t.Fatalf("round %d: offer answered OK %v, release stopped the call %v: want exactly one", i, advanced, released)
		}
	}
}

// A worker whose heartbeat loop stalled past the fence (a starved machine) drops its calls: the
// routers will have declared it down and re-place them from its last progress. Not a call that
// ingest has already moved away from it (drain, rebalance): its new owner starts at the new
// epoch's first frame, and nobody else processes the rest of this worker's epoch, so the worker
// finishes it (seen under load: a draining worker fenced at frame 18 of a call whose new owner
// began at 24 lost 18..23).
func TestFenceSparesMovedCall(t *testing.T) {
	w := &Worker{cfg: DefaultConfig(), m: newMetrics(prometheus.NewRegistry()), start: time.Now()}
	w.lastTick.Store(w.mono() - int64(10*w.cfg.FenceAfter)) // stalled
	if !w.fenced(w.mono()) {
		t.Fatal("worker not fenced")
	}
	o := &wire.Offer{Call: session.Spec{ID: session.ID{Tenant: "t", Call: "c"}, Legs: []session.Leg{{Index: 0, Codec: frame.CodecPCMU, Rate: 8000}}}, Epoch: 1}
	msg := func(seq uint32, fl frame.Flags) *nats.Msg {
		h := frame.Header{Flags: fl, Codec: frame.CodecPCMU, SampleRate: 8000, Epoch: 1, Seq: seq, MediaTS: seq * 160,
			Capture: time.Now().UnixNano(), DurationUS: 20000}
		b, err := frame.Append(nil, &h, make([]byte, 160))
		if err != nil {
			t.Fatal(err)
		}
		return &nats.Msg{Data: b}
	}
	w.group.Close() // no NATS here: the hand-back is marked, not sent
	c := newCall(w, o)
	if r := c.take(msg(0, frame.FlagEpochStart), w.mono()); r != proc.StopSuperseded {
		t.Fatalf("a fenced call not moved away: stop %q, want %q", r, proc.StopSuperseded)
	}
	if !c.handedBack.Load() {
		t.Error("a call that met the fence on a frame was not handed back")
	}
	c = newCall(w, o)
	c.migrating.Store(true)
	c.moved.Store(true)
	for seq := range uint32(3) {
		fl := frame.Flags(0)
		if seq == 0 {
			fl = frame.FlagEpochStart
		}
		if r := c.take(msg(seq, fl), w.mono()); r != "" {
			t.Fatalf("frame %d of a moved call on a fenced worker: stop %q", seq, r)
		}
	}
	if next := c.legs[0].next.Load(); next != 3 {
		t.Errorf("moved call processed up to %d, want 3", next)
	}
	if c.handedBack.Load() {
		t.Error("a moved call was handed back")
	}
}

// TestCallLayout keeps what docs/loadtest.md "The worker's CPU per frame" measured: a live
// frame's fields of its call, legs[0] and legs[1] included, in the struct's first six cache
// lines (each a miss to memory at thousands of calls), and the call in the allocator's
// 1,024-byte size class (memory per call).
func TestCallLayout(t *testing.T) {
	var c call
	if end := unsafe.Offsetof(c.legs) + 2*unsafe.Sizeof(c.legs[0]); end > 6*64 {
		t.Errorf("legs[1] ends at byte %d of the call, want within the first 6 cache lines (384)", end)
	}
	if n := unsafe.Sizeof(c); n > 1024 {
		t.Errorf("a call is %d bytes, want at most 1,024 (the next size class is 1,152)", n)
	}
}
