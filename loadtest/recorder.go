package loadtest

import (
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/proc"
)

// ProcessorName is the name of the worker-side recorder in the processor registry. Add it to a
// pool's processors (after "accounting") to measure that pool.
const ProcessorName = "loadtest"

// EventKind is the kind of the event a worker publishes at the end of each call when no
// in-process run owns the call's tenant: events.<tenant>.<call>.loadtest.
const EventKind = "loadtest"

func init() {
	proc.Register(ProcessorName, func(proc.Options) (proc.Processor, error) { return recorder{}, nil })
}

// recorder is the "loadtest" processor.
type recorder struct{}

// recCall measures one call on the worker: capture→worker latency of every live frame, and per
// leg the frames received, lost (by cause), duplicated and reordered.
type recCall struct {
	c    proc.Call
	col  *Collector     // in-process run, or nil
	hist *hdr.Histogram // remote: this call's own histogram, published at Stop
	key  uint32
	legs []legTracker
}

// remoteDigits is the precision of the per-call histogram a remote worker publishes; lower than
// the in-process one to keep 1,000 calls' histograms small.
const remoteDigits = 2

func (recorder) Start(c proc.Call) (proc.Handler, error) {
	sp := c.Spec()
	r := &recCall{c: c, col: lookupCollector(sp.Tenant), key: callKey(sp.Call), legs: make([]legTracker, len(sp.Legs))}
	for i := range r.legs {
		r.legs[i] = newLegTracker()
	}
	if r.col == nil {
		r.hist = hdr.New(histMin, histMax, remoteDigits)
	}
	return r, nil
}

func (r *recCall) Frame(f *proc.Frame) {
	if int(f.Header.Leg) >= len(r.legs) {
		return
	}
	t := &r.legs[f.Header.Leg]
	t.inOrder(f.Header.Seq)
	if f.Header.Has(frame.FlagReplayed) {
		t.replayed++
		return // a replayed frame's capture time says nothing about the live path
	}
	now := time.Now()
	lat := now.Sub(time.Unix(0, f.Header.Capture))
	if r.col != nil {
		r.col.frame(r.key, lat, now)
	} else {
		recordUS(r.hist, lat)
	}
}

func (r *recCall) Gap(g proc.Gap) {
	if int(g.Leg) >= len(r.legs) {
		return
	}
	r.legs[g.Leg].gap(g)
	if r.col != nil {
		r.col.loss(r.key, int64(g.Count()), time.Now())
	}
}

func (r *recCall) Duplicate(h *frame.Header) {
	if int(h.Leg) < len(r.legs) {
		r.legs[h.Leg].late(h.Seq)
	}
}

func (r *recCall) Stop(reason string) {
	if r.col != nil {
		r.col.report(r.c.Spec().Call, reason, r.legs)
		return
	}
	r.c.Emit(EventKind, newCallReport(reason, r.legs, r.hist))
}

// CallReport is the body of a "loadtest" event: one call's worker-side account.
type CallReport struct {
	Stop string        `json:"stop"`
	Legs []LegReport   `json:"legs"`
	Hist *hdr.Snapshot `json:"latency_us"`
}

// LegReport is one leg of a CallReport.
type LegReport struct {
	Received  int64            `json:"received"`
	Lost      int64            `json:"lost"`
	Dup       int64            `json:"duplicated"`
	Reordered int64            `json:"reordered"`
	Replayed  int64            `json:"replayed"`
	LostBy    map[string]int64 `json:"lost_by_cause,omitempty"`
}

func newCallReport(reason string, legs []legTracker, h *hdr.Histogram) CallReport {
	cr := CallReport{Stop: reason, Hist: h.Export()}
	for _, t := range legs {
		cr.Legs = append(cr.Legs, LegReport{Received: t.received, Lost: t.lost, Dup: t.dup, Reordered: t.reordered,
			Replayed: t.replayed, LostBy: t.lostBy})
	}
	return cr
}

// trackers turns a received CallReport back into trackers.
func (cr *CallReport) trackers() []legTracker {
	out := make([]legTracker, len(cr.Legs))
	for i, l := range cr.Legs {
		out[i] = legTracker{received: l.Received, lost: l.Lost, dup: l.Dup, reordered: l.Reordered, replayed: l.Replayed, lostBy: l.LostBy}
	}
	return out
}
