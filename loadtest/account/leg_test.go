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
