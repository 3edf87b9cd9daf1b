package loadtest

import "github.com/callrouter/callrouter/internal/proc"

// Gap causes the load tester adds to the workers' own (package proc).
const (
	// CauseUnaccounted counts frames sent that a worker neither processed nor reported as lost:
	// the call's handler never started, stopped early, or its report never arrived.
	CauseUnaccounted = "unaccounted"
)

// maxGapsKept bounds the gaps a leg remembers to tell reordered frames from duplicates.
const maxGapsKept = 32

// legTracker keeps one leg's receive-side accounting. It is owned by one goroutine.
type legTracker struct {
	next      int64 // next expected sequence; -1 before the first frame
	received  int64
	dup       int64
	reordered int64
	lost      int64
	replayed  int64
	lostBy    map[string]int64
	gaps      []proc.Gap // most recent gaps, to recognise late frames
}

func newLegTracker() legTracker { return legTracker{next: -1} }

// inOrder counts a frame that the worker delivered in order.
func (t *legTracker) inOrder(seq uint32) {
	t.received++
	t.next = int64(seq) + 1
}

// observe counts a frame straight off the bus (baseline subscribers), detecting gaps and late
// frames itself; gaps are attributed to the bus. It reports whether the frame was in order.
func (t *legTracker) observe(seq uint32) bool {
	s := int64(seq)
	switch {
	case t.next < 0 || s == t.next:
	case s > t.next:
		t.gap(proc.Gap{From: uint32(t.next), To: seq - 1, Cause: proc.CauseBus})
	default:
		t.late(seq)
		return false
	}
	t.inOrder(seq)
	return true
}

// gap counts a range of frames that will never be processed.
func (t *legTracker) gap(g proc.Gap) {
	n := int64(g.Count())
	t.lost += n
	if t.lostBy == nil {
		t.lostBy = map[string]int64{}
	}
	t.lostBy[g.Cause] += n
	if len(t.gaps) == maxGapsKept {
		copy(t.gaps, t.gaps[1:])
		t.gaps = t.gaps[:maxGapsKept-1]
	}
	t.gaps = append(t.gaps, g)
}

// late counts a frame that arrived behind the leg's position: reordered when it falls in a gap
// reported earlier (it was counted lost, since it arrived too late to be processed), a duplicate
// otherwise.
func (t *legTracker) late(seq uint32) {
	for _, g := range t.gaps {
		if seq >= g.From && seq <= g.To {
			t.reordered++
			return
		}
	}
	t.dup++
}
