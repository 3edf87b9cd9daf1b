package worker_test

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
)

// Paused frames (a secure pause) reach no processor's Frame, even when one carries a payload
// (ingest sends none; a forged frame might); accounting counts them as paused, a hole between two
// of them too (cause paused), and none of it as lost.
func TestPausedFramesAreAccountedNotLost(t *testing.T) {
	l := startLone(t, workerConfig())
	acct, err := l.nc.SubscribeSync(subjects.Event("acme", "pci", "accounting"))
	if err != nil {
		t.Fatal(err)
	}
	gaps, err := l.nc.SubscribeSync(subjects.Event("acme", "pci", "gap"))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if r := l.offer(t, wire.Offer{Call: spec("pci"), Epoch: 1}); !r.OK {
		t.Fatalf("offer refused: %+v", r.Reply)
	}
	for seq := uint32(0); seq < 30; seq++ {
		var fl frame.Flags
		switch {
		case seq == 0:
			fl = frame.FlagEpochStart
		case seq == 15:
			continue // lost on the bus in the middle of the pause (no ring to refetch it from)
		case seq >= 10 && seq < 20:
			fl = frame.FlagPaused
		}
		l.send(t, "pci", 0, 1, seq, fl)
		l.send(t, "pci", 1, 1, seq, fl)
		time.Sleep(time.Millisecond) // keep the two test connections' frames from racing a replay
	}
	l.send(t, "pci", 0, 1, 30, frame.FlagLast)
	l.send(t, "pci", 1, 1, 30, frame.FlagLast)
	m, err := acct.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var ev wire.Event
	var a proc.Accounting
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(ev.Data, &a); err != nil {
		t.Fatal(err)
	}
	for _, la := range a.Legs {
		if la.Paused != 10 || la.Lost != 0 || len(la.LostBy) != 0 || la.Processed != 20 {
			t.Errorf("leg %d accounting %+v: want 10 paused, 20 processed, 0 lost", la.Leg, la)
		}
	}
	var want []uint32
	for seq := uint32(0); seq < 30; seq++ {
		if seq < 10 || seq >= 20 {
			want = append(want, seq)
		}
	}
	for _, k := range []string{"acme/pci/0", "acme/pci/1"} {
		if got := rec.seqsOf(k); !slices.Equal(got, want) {
			t.Errorf("%s: processors saw %v, want %v (no paused frame)", k, got, want)
		}
		if g := rec.gapsOf(k); len(g) != 1 || g[0] != (proc.Gap{Leg: g[0].Leg, From: 15, To: 15, Cause: proc.CausePaused}) {
			t.Errorf("%s: gaps %v, want one of cause paused at 15", k, g)
		}
	}
	if m, err := gaps.NextMsg(5 * time.Second); err != nil || !json.Valid(m.Data) {
		t.Errorf("gap event: %v", err)
	}
	if n := metric(t, l.reg, "callrouter_worker_frames_total", map[string]string{"result": "paused"}); n != 20 {
		t.Errorf("frames_total{paused} %v, want 20", n)
	}
	if n := metric(t, l.reg, "callrouter_worker_lost_frames_total", nil); n != 0 {
		t.Errorf("lost_frames_total %v, want 0", n)
	}
}
