// Package probe is the worker side of the load tester: the "loadtest" processor, which measures
// every call on the worker that processes it (capture→worker latency of each live frame, and per
// leg the frames received, lost by cause, duplicated and reordered). When a load test runs in the
// same process it writes into that run's sink; otherwise it publishes its account in a "loadtest"
// event at the end of each call. It is small on purpose, so that a worker binary can import it.
package probe

import (
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/proc"
)

// ProcessorName is the processor's name in the registry. Add it to a pool's processors (after
// "accounting") to measure that pool.
const ProcessorName = "loadtest"

// EventKind is the kind of the event the processor publishes at the end of each call when no
// in-process sink owns the call's tenant: events.<tenant>.<call>.loadtest, body CallReport.
const EventKind = "loadtest"

// Histogram bounds: latencies are recorded in microseconds from 1 µs to 60 s.
const (
	HistMin = 1
	HistMax = 60_000_000
	// EventDigits is the precision of the histogram in a "loadtest" event: two significant
	// digits keep a thousand calls' histograms small.
	EventDigits = 2
)

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

var sinks sync.Map // tenant → Sink

// Attach makes s the sink of tenant's calls in this process until detach is called.
func Attach(tenant string, s Sink) (detach func(), err error) {
	if _, dup := sinks.LoadOrStore(tenant, s); dup {
		return nil, fmt.Errorf("probe: tenant %q already has a sink in this process", tenant)
	}
	return func() { sinks.CompareAndDelete(tenant, s) }, nil
}

func lookup(tenant string) Sink {
	if v, ok := sinks.Load(tenant); ok {
		return v.(Sink)
	}
	return nil
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

func init() {
	proc.Register(ProcessorName, func(proc.Options) (proc.Processor, error) { return recorder{}, nil })
}

type recorder struct{}

// call measures one call on the worker.
type call struct {
	c    proc.Call
	sink Sink           // in-process run, or nil
	hist *hdr.Histogram // no sink: this call's own histogram, published at Stop
	key  uint32
	legs []Leg
}

func (recorder) Start(c proc.Call) (proc.Handler, error) {
	sp := c.Spec()
	r := &call{c: c, sink: lookup(sp.Tenant), key: Key(sp.Call), legs: make([]Leg, len(sp.Legs))}
	for i := range r.legs {
		r.legs[i] = NewLeg()
	}
	if r.sink == nil {
		r.hist = hdr.New(HistMin, HistMax, EventDigits)
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
		RecordUS(r.hist, lat)
	}
}

func (r *call) Gap(g proc.Gap) {
	if int(g.Leg) >= len(r.legs) {
		return
	}
	r.legs[g.Leg].Gap(g)
	if r.sink != nil {
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
	r.c.Emit(EventKind, NewCallReport(reason, r.legs, r.hist))
}
