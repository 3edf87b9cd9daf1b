package proc

import (
	"github.com/callrouter/callrouter/internal/frame"
)

func init() {
	Register("accounting", func(Options) (Processor, error) { return accounting{}, nil })
}

// accounting counts, per leg, the frames processed, gap-filled, replayed, duplicated, paused and
// lost (by cause), publishes a "gap" event for every gap and an "accounting" summary when the call stops.
type accounting struct{}

// LegAccount is the per-leg summary in the "accounting" event.
type LegAccount struct {
	Leg        uint8  `json:"leg"`
	Name       string `json:"name"`
	Processed  int    `json:"processed"`
	GapFilled  int    `json:"gap_filled"`
	Replayed   int    `json:"replayed"`
	Duplicates int    `json:"duplicates"`
	// Paused counts frames of a secure pause (frame.FlagPaused) and frames missing between two
	// of them (gap cause paused): withheld by ingest, not lost, so never in Lost or LostBy.
	Paused   int            `json:"paused"`
	Lost     int            `json:"lost"`
	LostBy   map[string]int `json:"lost_by_cause,omitempty"`
	FirstSeq int64          `json:"first_seq"`
	LastSeq  int64          `json:"last_seq"`
}

// Accounting is the body of the "accounting" event.
type Accounting struct {
	Reason string       `json:"reason"`
	Legs   []LegAccount `json:"legs"`
}

type accountingCall struct {
	legs []LegAccount
	// two holds legs for a call of up to two legs, right after the slice: with thousands of calls
	// a frame meets its call's accounting cold in the CPU caches, and a frame's count is then one
	// miss to memory rather than two, one behind the other (BenchmarkCallFrame in
	// internal/worker, calls=50000).
	two [2]LegAccount
	c   Call
}

func (accounting) Start(c Call) (Handler, error) {
	a := &accountingCall{c: c}
	if n := len(c.Spec().Legs); n <= len(a.two) {
		a.legs = a.two[:n]
	} else {
		a.legs = make([]LegAccount, n)
	}
	for i, l := range c.Spec().Legs {
		a.legs[i] = LegAccount{Leg: l.Index, Name: l.Name, FirstSeq: -1, LastSeq: -1}
	}
	return a, nil
}

func (a *accountingCall) leg(i uint8) *LegAccount {
	if int(i) < len(a.legs) {
		return &a.legs[i]
	}
	return nil
}

func (a *accountingCall) Frame(f *Frame) {
	l := a.leg(f.Header.Leg)
	if l == nil {
		return
	}
	if l.FirstSeq < 0 {
		l.FirstSeq = int64(f.Header.Seq)
	}
	l.LastSeq = int64(f.Header.Seq)
	l.Processed++
	if f.Header.Has(frame.FlagGapFilled) {
		l.GapFilled++
	}
	if f.Header.Has(frame.FlagReplayed) {
		l.Replayed++
	}
}

func (a *accountingCall) Paused(h *frame.Header) {
	l := a.leg(h.Leg)
	if l == nil {
		return
	}
	if l.FirstSeq < 0 {
		l.FirstSeq = int64(h.Seq)
	}
	l.LastSeq = int64(h.Seq)
	l.Paused++
	if h.Has(frame.FlagReplayed) {
		l.Replayed++
	}
}

func (a *accountingCall) Duplicate(h *frame.Header) {
	if l := a.leg(h.Leg); l != nil {
		l.Duplicates++
	}
}

func (a *accountingCall) Gap(g Gap) {
	l := a.leg(g.Leg)
	if l == nil {
		return
	}
	if g.Cause == CausePaused {
		l.Paused += g.Count()
		a.c.Emit("gap", g)
		return
	}
	l.Lost += g.Count()
	if l.LostBy == nil {
		l.LostBy = map[string]int{}
	}
	l.LostBy[g.Cause] += g.Count()
	a.c.Emit("gap", g)
}

func (a *accountingCall) Stop(reason string) {
	a.c.Emit("accounting", Accounting{Reason: reason, Legs: a.legs})
}
