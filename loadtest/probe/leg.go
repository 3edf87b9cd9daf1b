package probe

import "github.com/callrouter/callrouter/internal/proc"

// maxGapsKept bounds the gaps a leg remembers to tell reordered frames from duplicates.
const maxGapsKept = 32

// Leg is one leg's receive-side account. It is owned by one goroutine.
type Leg struct {
	Received   int64
	Lost       int64
	Duplicated int64
	Reordered  int64
	Replayed   int64
	GapFilled  int64 // frames ingest synthesized for media that never arrived (RTP loss)
	LostBy     map[string]int64

	next int64      // next expected sequence; -1 before the first frame
	gaps []proc.Gap // most recent gaps, to recognise late frames
}

// NewLeg returns an empty account.
func NewLeg() Leg { return Leg{next: -1} }

// Next returns the next sequence number the leg expects (-1 before its first frame).
func (l *Leg) Next() int64 { return l.next }

// InOrder counts a frame that the worker delivered in order.
func (l *Leg) InOrder(seq uint32) {
	l.Received++
	l.next = int64(seq) + 1
}

// Observe counts a frame straight off the bus (the baseline's subscribers), detecting gaps and
// late frames itself; gaps are attributed to the bus. It reports whether the frame was in order.
func (l *Leg) Observe(seq uint32) bool {
	s := int64(seq)
	switch {
	case l.next < 0 || s == l.next:
	case s > l.next:
		l.Gap(proc.Gap{From: uint32(l.next), To: seq - 1, Cause: proc.CauseBus})
	default:
		l.Late(seq)
		return false
	}
	l.InOrder(seq)
	return true
}

// Gap counts a range of frames that will never be processed.
func (l *Leg) Gap(g proc.Gap) {
	n := int64(g.Count())
	l.Lost += n
	if l.LostBy == nil {
		l.LostBy = map[string]int64{}
	}
	l.LostBy[g.Cause] += n
	if len(l.gaps) == maxGapsKept {
		copy(l.gaps, l.gaps[1:])
		l.gaps = l.gaps[:maxGapsKept-1]
	}
	l.gaps = append(l.gaps, g)
}

// Late counts a frame that arrived behind the leg's position: reordered when it falls in a gap
// reported earlier (it stays counted as lost: it came too late to be processed), a duplicate
// otherwise.
func (l *Leg) Late(seq uint32) {
	for _, g := range l.gaps {
		if seq >= g.From && seq <= g.To {
			l.Reordered++
			return
		}
	}
	l.Duplicated++
}
