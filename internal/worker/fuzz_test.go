package worker

import (
	"encoding/binary"
	"testing"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// invariants is a handler that checks what a call delivers: per leg, frames in strictly
// increasing order (never a duplicate), each gap with a cause and joined to what came before
// and after it, nothing from an epoch older than the one joined or newer than the call's.
type invariants struct {
	t    *testing.T
	c    *call
	last [session.MaxLegs]int64 // last sequence delivered or covered by a gap; -1 none
	gapT [session.MaxLegs]int64 // To+1 of the last gap, awaiting the frame that follows it; -1 none
}

func (v *invariants) Frame(f *proc.Frame) {
	h := &f.Header
	l := h.Leg
	if int64(h.Seq) <= v.last[l] {
		v.t.Fatalf("leg %d: seq %d delivered after %d", l, h.Seq, v.last[l])
	}
	if v.gapT[l] >= 0 && int64(h.Seq) != v.gapT[l] {
		v.t.Fatalf("leg %d: gap ended before %d but the next frame is %d", l, v.gapT[l], h.Seq)
	}
	if v.last[l] >= 0 && v.gapT[l] < 0 && int64(h.Seq) != v.last[l]+1 {
		v.t.Fatalf("leg %d: %d follows %d with no gap reported", l, h.Seq, v.last[l])
	}
	if h.Epoch < v.c.join || h.Epoch > v.c.curEpoch() {
		v.t.Fatalf("leg %d: frame of epoch %d delivered to a call joined at %d, now at %d", l, h.Epoch, v.c.join, v.c.curEpoch())
	}
	v.last[l], v.gapT[l] = int64(h.Seq), -1
}

func (v *invariants) Gap(g proc.Gap) {
	if g.Cause == "" || g.From > g.To {
		v.t.Fatalf("gap %+v without a cause or backwards", g)
	}
	if v.last[g.Leg] >= 0 && int64(g.From) != v.last[g.Leg]+1 {
		v.t.Fatalf("gap %+v does not start after the last frame %d", g, v.last[g.Leg])
	}
	v.last[g.Leg], v.gapT[g.Leg] = int64(g.To), int64(g.To)+1
}

func (v *invariants) Stop(string) {}

// FuzzCallStateMachine feeds one call a sequence of frames (any leg, epoch, sequence, flags,
// capture time) and control events (offers advancing the epoch, a stop) and checks the
// invariants above. Replays fail (no ingest), so every hole must still come out as a gap.
func FuzzCallStateMachine(f *testing.F) {
	f.Add([]byte{0, 0, 8, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0})
	f.Add([]byte{0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 1, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 0})
	f.Add([]byte{0, 1, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0})
	f.Fuzz(runOps)
}

// fuzzMetrics is shared by every run: building a registry per input would dominate the time.
var fuzzMetrics = newMetrics(prometheus.NewRegistry())

// runOps plays ops against a fresh call; see FuzzCallStateMachine.
func runOps(t *testing.T, ops []byte) {
	cfg := DefaultConfig()
	cfg.ID = "fz"
	cfg.QueueFrames, cfg.PendingMsgs = 4, 8
	w := &Worker{cfg: cfg, log: zerolog.Nop(), m: fuzzMetrics, calls: map[session.ID]*call{}}
	o := &wire.Offer{Call: session.Spec{ID: session.ID{Tenant: "t", Call: "c"}, Legs: make([]session.Leg, 2)}, Epoch: 2, Ingest: "in1"}
	if len(ops) > 0 && ops[0]&1 == 1 {
		o.Resume = []session.LegSeq{{Leg: 0, Next: int64(ops[0] >> 1)}}
	}
	c := newCall(w, o)
	inv := &invariants{t: t, c: c}
	for i := range inv.last {
		inv.last[i], inv.gapT[i] = -1, -1
	}
	c.handlers = []proc.Handler{inv}
	var now int64 = 1
	buf := make([]byte, 0, frame.HeaderLen+16)
	for len(ops) >= 8 {
		op := ops[:8]
		ops = ops[8:]
		now += int64(op[7]) * int64(frame.Duration) / 4
		w.lastTick.Store(now) // the heartbeat loop is not stalled (fencing is not under test)
		switch op[0] % 8 {
		case 6: // an offer keeping this worker at a higher epoch
			if !c.advance(c.curEpoch() + uint32(op[1]%3)) {
				return
			}
			continue
		case 7: // a stop (release, reap)
			return
		}
		h := frame.Header{Flags: frame.Flags(op[1] & 0x0f), Codec: frame.CodecPCMU, Leg: op[2] % 3, SampleRate: 8000,
			Epoch: c.curEpoch() + uint32(op[3]%4) - 1, Seq: binary.LittleEndian.Uint32(op[3:7]) >> (op[0] % 32),
			Capture: w.wall0 + now - int64(op[6])*int64(frame.Duration)}
		buf, _ = frame.Append(buf[:0], &h, make([]byte, 1+op[0]%16))
		if r := c.take(&nats.Msg{Data: buf}, now); r != "" {
			return
		}
	}
}
