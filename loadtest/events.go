package loadtest

import (
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/callrouter/callrouter/loadtest/account"
	"github.com/nats-io/nats.go"
)

// eventSink collects a remote stack's worker-side reports of one phase from its events: the
// "loadtest" event of workers that run the processor (counts and latency), else the default
// "accounting" event (counts only), and "gap" events for the loss timeline.
type eventSink struct {
	col    *Collector
	prefix string // call ids of this run start with it
	subs   []*nats.Subscription

	// Every report of a call is kept: a call handed over (released, superseded, migrated) reports
	// once from each worker that had it, and each has its part of the frames.
	mu   sync.Mutex
	acc  map[string][]accReport
	lt   map[string][]account.CallReport
	done bool
}

// accReport is a call's accounting event and when it arrived.
type accReport struct {
	account.Accounting
	at time.Time
}

// probeGrace is how long a call's accounting event waits for the same call's "loadtest" event
// before the call counts as reported without it (workers that do not run the probe). On a worker
// that runs both, the probe's event follows the accounting one on the same connection.
const probeGrace = time.Second

func newEventSink(col *Collector, runID string) *eventSink {
	return &eventSink{col: col, prefix: runID, acc: map[string][]accReport{}, lt: map[string][]account.CallReport{}}
}

func subscribeEvents(nc *nats.Conn, tenant, runID string, col *Collector) (*eventSink, error) {
	s := newEventSink(col, runID)
	for _, kind := range []string{"accounting", account.EventKind, "gap"} {
		sub, err := nc.Subscribe(subjects.Event(tenant, "*", kind), s.onEvent)
		if err != nil {
			s.close()
			return nil, err
		}
		_ = sub.SetPendingLimits(1<<20, 1<<30)
		s.subs = append(s.subs, sub)
	}
	return s, nc.Flush()
}

func (s *eventSink) onEvent(m *nats.Msg) {
	var ev wire.Event
	if json.Unmarshal(m.Data, &ev) != nil || !strings.HasPrefix(ev.Call, s.prefix) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return
	}
	switch ev.Kind {
	case "accounting":
		var a account.Accounting
		if json.Unmarshal(ev.Data, &a) == nil {
			s.acc[ev.Call] = append(s.acc[ev.Call], accReport{a, time.Now()})
		}
	case account.EventKind:
		var cr account.CallReport
		if json.Unmarshal(ev.Data, &cr) == nil {
			s.lt[ev.Call] = append(s.lt[ev.Call], cr)
		}
	case "gap":
		var g account.Gap
		if json.Unmarshal(ev.Data, &g) == nil {
			s.col.Loss(account.Key(ev.Call), int64(g.Count()), time.Now())
		}
	}
}

// calls returns how many calls have sent their last report (a stop that is not a hand-over):
// those with such a "loadtest" event, and those with only accounting events, one of them such a
// stop that has waited probeGrace for its "loadtest" event.
func (s *eventSink) calls() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, crs := range s.lt {
		if slices.ContainsFunc(crs, func(cr account.CallReport) bool { return !handOvers[cr.Stop] }) {
			n++
		}
	}
	for call, as := range s.acc {
		if _, ok := s.lt[call]; !ok && slices.ContainsFunc(as, func(a accReport) bool {
			return !handOvers[a.Reason] && time.Since(a.at) >= probeGrace
		}) {
			n++
		}
	}
	return n
}

// finish merges the reports into the collector.
func (s *eventSink) finish() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.done = true
	for call, crs := range s.lt {
		for _, cr := range crs {
			s.col.Report(call, cr.Stop, cr.Accounts())
			if cr.Hist != nil {
				s.col.mergeHist(account.Key(call), hdr.Import(cr.Hist))
			}
		}
	}
	for call, as := range s.acc {
		if _, ok := s.lt[call]; ok {
			continue // the probe's events have the same counts and the latency
		}
		for _, a := range as {
			s.col.Report(call, a.Reason, account.FromAccounting(a.Accounting))
		}
	}
}

func (s *eventSink) close() {
	for _, sub := range s.subs {
		_ = sub.Unsubscribe()
	}
}
