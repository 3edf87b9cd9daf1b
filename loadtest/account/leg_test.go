package account

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestLegObserve(t *testing.T) {
	l := NewLeg()
	for _, s := range []uint32{0, 1, 2, 5, 3, 6, 6, 1, 7} {
		l.Observe(s)
	}
	// 3 and 4 were a gap when 5 arrived: 3 arrives late (reordered), 4 never; 6 and 1 repeat.
	got := map[string]int64{"received": l.Received, "lost": l.Lost, "reordered": l.Reordered, "dup": l.Duplicated, "next": l.Next()}
	want := map[string]int64{"received": 6, "lost": 2, "reordered": 1, "dup": 2, "next": 8}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("leg (-want +got):\n%s", d)
	}
	if l.LostBy[CauseBus] != 2 {
		t.Errorf("lost by cause %v, want 2 bus_loss", l.LostBy)
	}
}

func TestLegKeepsBoundedGaps(t *testing.T) {
	l := NewLeg()
	for i := uint32(0); i < 200; i += 2 {
		l.Observe(i)
	}
	if len(l.gaps) != maxGapsKept || l.Lost != 99 {
		t.Errorf("%d gaps kept, %d lost; want %d, 99", len(l.gaps), l.Lost, maxGapsKept)
	}
}

// TestLegPausedIsAccounted: paused frames and the span missing between two of them (cause
// paused) are accounted as paused, never lost, and survive a loadtest event's round trip.
func TestLegPausedIsAccounted(t *testing.T) {
	l := NewLeg()
	l.InOrder(0)
	l.PausedFrame(1)
	l.Gap(Gap{From: 2, To: 4, Cause: CausePaused})
	l.PausedFrame(5)
	l.InOrder(6)
	if l.Received != 2 || l.Paused != 5 || l.Lost != 0 || len(l.LostBy) != 0 || l.Next() != 7 {
		t.Errorf("received %d, paused %d, lost %d %v, next %d; want 2, 5, 0, 7", l.Received, l.Paused, l.Lost, l.LostBy, l.Next())
	}
	cr := NewCallReport("end", []Leg{l}, nil)
	if got := cr.Accounts()[0]; got.Paused != 5 || got.Received != 2 {
		t.Errorf("after the event: %+v", got)
	}
	if got := FromAccounting(Accounting{Legs: []LegAccount{{Processed: 2, Paused: 5}}})[0]; got.Paused != 5 {
		t.Errorf("from an accounting event: %+v", got)
	}
}
