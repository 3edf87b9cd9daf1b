// Package probe is the worker side of the load tester: the "loadtest" processor, which measures
// every call on the worker that processes it (capture→worker latency of each live frame, and per
// leg the frames received, lost by cause, duplicated and reordered). When a load test runs in the
// same process it writes into that run's sink; otherwise it publishes its account in a "loadtest"
// event at the end of each call (package account has the event body). Production binaries leave
// it out: cmd/worker and cmd/callrouter link it only when built with -tags loadtest, and the
// sinks it writes into are process-global only in processes that link it (cmd/loadtest's).
package probe

import (
	"fmt"
	"sync"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/loadtest/account"
)

// ProcessorName is the processor's name in the registry. Add it to a pool's processors (after
// "accounting") to measure that pool.
const ProcessorName = "loadtest"

var sinks sync.Map // tenant → Sink

// Attach makes s the sink of tenant's calls in this process until detach is called.
func Attach(tenant string, s account.Sink) (detach func(), err error) {
	if _, dup := sinks.LoadOrStore(tenant, s); dup {
		return nil, fmt.Errorf("probe: tenant %q already has a sink in this process", tenant)
	}
	return func() { sinks.CompareAndDelete(tenant, s) }, nil
}

func lookup(tenant string) account.Sink {
	if v, ok := sinks.Load(tenant); ok {
		return v.(account.Sink)
	}
	return nil
}

func init() {
	proc.Register(ProcessorName, func(proc.Options) (proc.Processor, error) { return recorder{}, nil })
}

type recorder struct{}

// call measures one call on the worker.
type call struct {
	c    proc.Call
	sink account.Sink   // in-process run, or nil
	hist *hdr.Histogram // no sink: this call's own histogram, published at Stop
	key  uint32
	legs []account.Leg
}

func (recorder) Start(c proc.Call) (proc.Handler, error) {
	sp := c.Spec()
	r := &call{c: c, sink: lookup(sp.Tenant), key: account.Key(sp.Call), legs: make([]account.Leg, len(sp.Legs))}
	for i := range r.legs {
		r.legs[i] = account.NewLeg()
	}
	if r.sink == nil {
		r.hist = hdr.New(account.HistMin, account.HistMax, account.EventDigits)
	}
	return r, nil
}

func (r *call) Frame(f *proc.Frame) {
	if int(f.Header.Leg) >= len(r.legs) {
		return
	}
	l := &r.legs[f.Header.Leg]
	l.InOrder(f.Header.Seq)
	switch {
	case f.Header.Has(frame.FlagReplayed):
		l.Replayed++
		return // a replayed frame's capture time says nothing about the live path
	case f.Header.Has(frame.FlagGapFilled):
		l.GapFilled++
		return // nor does silence ingest made up
	}
	now := time.Unix(0, f.Received)
	if f.Received == 0 {
		now = time.Now()
	}
	lat := now.Sub(time.Unix(0, f.Header.Capture))
	if r.sink != nil {
		r.sink.Frame(r.key, lat, now)
	} else {
		account.RecordUS(r.hist, lat)
	}
}

// Paused counts a frame of a pause (proc.PauseHandler): accounted, neither received nor lost.
func (r *call) Paused(h *frame.Header) {
	if int(h.Leg) < len(r.legs) {
		r.legs[h.Leg].PausedFrame(h.Seq)
	}
}

func (r *call) Gap(g proc.Gap) {
	if int(g.Leg) >= len(r.legs) {
		return
	}
	r.legs[g.Leg].Gap(account.Gap{Leg: g.Leg, From: g.From, To: g.To, Cause: g.Cause})
	if r.sink != nil && g.Cause != proc.CausePaused {
		r.sink.Loss(r.key, int64(g.Count()), time.Now())
	}
}

func (r *call) Duplicate(h *frame.Header) {
	if int(h.Leg) < len(r.legs) {
		r.legs[h.Leg].Late(h.Seq)
	}
}

func (r *call) Stop(reason string) {
	if r.sink != nil {
		r.sink.Report(r.c.Spec().Call, reason, r.legs)
		return
	}
	// Superseded too: the frames this worker processed are reported by no other (its successor
	// resumes after them), and would show as unaccounted.
	if rp, ok := r.c.(proc.Reporter); ok {
		rp.Report(account.EventKind, account.NewCallReport(reason, r.legs, r.hist))
		return
	}
	r.c.Emit(account.EventKind, account.NewCallReport(reason, r.legs, r.hist))
}
