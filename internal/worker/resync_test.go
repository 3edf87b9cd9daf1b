package worker_test

import (
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/wire"
)

// A frame published with a far-forward sequence number does not move the call: alone it is
// dropped and the real stream goes on without a gap or a duplicate; two in a row re-anchor the
// leg with one gap of cause resync, which processors must not fill.
func TestForwardSequenceJump(t *testing.T) {
	l := startLone(t, workerConfig())
	if r := l.offer(t, wire.Offer{Call: spec("jump"), Epoch: 1}); !r.OK {
		t.Fatalf("offer refused: %+v", r.Reply)
	}
	sendBoth := func(from, to uint32) {
		for seq := from; seq < to; seq++ {
			var fl frame.Flags
			if seq == 0 {
				fl = frame.FlagEpochStart
			}
			l.send(t, "jump", 0, 1, seq, fl)
			l.send(t, "jump", 1, 1, seq, fl)
		}
	}
	sendBoth(0, 50)
	const far = 1 << 30
	l.send(t, "jump", 0, 1, far, 0) // a stray frame from a broken or hostile sender
	sendBoth(50, 100)
	eventually(t, 5*time.Second, "frames 0..99", func() bool { return len(rec.seqsOf("acme/jump/1")) == 100 && len(rec.seqsOf("acme/jump/0")) == 100 })
	for i, s := range rec.seqsOf("acme/jump/0") {
		if s != uint32(i) {
			t.Fatalf("leg 0 frame %d has seq %d: the stray frame moved the stream", i, s)
		}
	}
	if g := rec.gapsOf("acme/jump/0"); len(g) != 0 {
		t.Fatalf("a stray far-forward frame caused gaps %v", g)
	}
	if n := metric(t, l.reg, "callrouter_worker_frames_total", map[string]string{"result": "jump_held"}); n != 1 {
		t.Errorf("frames_total{jump_held} %v, want 1", n)
	}

	// Two in a row: the sender really jumped. The leg follows, with one resync gap.
	l.send(t, "jump", 0, 1, far, 0)
	l.send(t, "jump", 0, 1, far+1, 0)
	eventually(t, 5*time.Second, "the re-anchored frame", func() bool { return len(rec.seqsOf("acme/jump/0")) == 101 })
	if got := rec.seqsOf("acme/jump/0"); got[100] != far+1 {
		t.Fatalf("after two far-forward frames the leg processed %d, want %d", got[100], far+1)
	}
	want := proc.Gap{Leg: 0, From: 100, To: far, Cause: proc.CauseResync}
	if g := rec.gapsOf("acme/jump/0"); len(g) != 1 || g[0] != want {
		t.Fatalf("gaps %v, want [%v]", g, want)
	}
	if n := metric(t, l.reg, "callrouter_worker_resyncs_total", nil); n != 1 {
		t.Errorf("resyncs_total %v, want 1", n)
	}
	if n := metric(t, l.reg, "callrouter_worker_replays_total", nil); n != 0 {
		t.Errorf("%v replays asked for a jump no ring can hold", n)
	}
	// A forward hole that real time explains is still a loss (bus_loss, refetched from the ring).
	time.Sleep(200 * time.Millisecond)
	l.send(t, "jump", 1, 1, 105, 0)
	eventually(t, 5*time.Second, "the frame after a small hole", func() bool { return len(rec.seqsOf("acme/jump/1")) == 101 })
	if g := rec.gapsOf("acme/jump/1"); len(g) != 1 || g[0].Cause != proc.CauseBus || g[0].Count() != 5 {
		t.Fatalf("leg 1 gaps %v, want one bus_loss gap of 5", g)
	}
}
