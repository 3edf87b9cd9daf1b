// Package account is the load tester's per-leg frame account and the body of the "loadtest"
// event, shared by the worker-side probe (package probe) and the black-box client (package
// loadtest). It imports nothing of callrouter's: the event bodies it reads are the wire contract
// of docs/protocol.md, decoded the way any outside consumer would.
package account

import (
	"hash/fnv"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// Gap causes the tester attributes itself; the workers' causes (package proc) arrive as strings.
const (
	CauseBus     = "bus_loss"     // missing between NATS publish and the subscriber
	CauseNetwork = "network_loss" // lost before ingest: the tester's own RTP impairments
	// CausePaused is the workers' cause for frames missing between two paused frames: ingest
	// withheld them during a pause, so they are accounted (Leg.Paused), not lost.
	CausePaused = "paused"
)

// Histogram bounds: latencies are recorded in microseconds from 1 µs to 60 s.
const (
	HistMin = 1
	HistMax = 60_000_000
	// EventDigits is the precision of the histogram in a "loadtest" event: two significant
	// digits keep a thousand calls' histograms small.
	EventDigits = 2
)

// EventKind is the kind of the event the probe publishes at the end of each call when no
// in-process sink owns the call's tenant: events.<tenant>.<call>.loadtest, body CallReport.
const EventKind = "loadtest"

// Sink receives the measurements of the calls of one tenant, from every worker in the process.
// Its methods are called concurrently from the calls' goroutines.
type Sink interface {
	// Frame records one live frame processed at now, captured lat earlier. key is Key(call).
	Frame(key uint32, lat time.Duration, now time.Time)
	// Loss records n frames reported lost at now.
	Loss(key uint32, n int64, now time.Time)
	// Report records a call's account when the worker stops it.
	Report(call, stop string, legs []Leg)
}

// Key hashes a call id, to spread a sink's locks.
func Key(call string) uint32 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(call))
	return h.Sum32()
}

// RecordUS records d in microseconds, clamped into [HistMin, HistMax].
func RecordUS(h *hdr.Histogram, d time.Duration) {
	_ = h.RecordValue(min(max(d.Microseconds(), HistMin), HistMax))
}

// Gap is a range of frames that will never be processed: sequence numbers From..To inclusive on
// a leg (the body of a "gap" event).
type Gap struct {
	Leg   uint8  `json:"leg"`
	From  uint32 `json:"from"`
	To    uint32 `json:"to"`
	Cause string `json:"cause"`
}

// Count returns the number of frames in the gap.
func (g Gap) Count() int { return int(g.To-g.From) + 1 }

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
	// Paused counts frames of a pause (frame.FlagPaused, and the ones missing between two of
	// them): ingest withheld their audio on purpose, so they are accounted, never lost.
	Paused int64
	LostBy map[string]int64

	next int64 // next expected sequence; -1 before the first frame
	gaps []Gap // most recent gaps, to recognise late frames
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
		l.Gap(Gap{From: uint32(l.next), To: seq - 1, Cause: CauseBus})
	default:
		l.Late(seq)
		return false
	}
	l.InOrder(seq)
	return true
}

// PausedFrame counts a paused frame the worker delivered in order.
func (l *Leg) PausedFrame(seq uint32) {
	l.Paused++
	l.next = int64(seq) + 1
}

// Gap counts a range of frames that will never be processed; a paused span counts as paused.
func (l *Leg) Gap(g Gap) {
	n := int64(g.Count())
	if g.Cause == CausePaused {
		l.Paused += n
		return
	}
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
