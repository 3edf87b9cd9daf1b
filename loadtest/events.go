package loadtest

import (
	"encoding/json"
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

	mu   sync.Mutex
	acc  map[string]accReport
	lt   map[string]account.CallReport
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

func subscribeEvents(nc *nats.Conn, tenant, runID string, col *Collector) (*eventSink, error) {
	s := &eventSink{col: col, prefix: runID, acc: map[string]accReport{}, lt: map[string]account.CallReport{}}
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
			s.acc[ev.Call] = accReport{a, time.Now()}
		}
	case account.EventKind:
		var cr account.CallReport
		if json.Unmarshal(ev.Data, &cr) == nil {
			s.lt[ev.Call] = cr
		}
	case "gap":
		var g account.Gap
		if json.Unmarshal(ev.Data, &g) == nil {
			s.col.Loss(account.Key(ev.Call), int64(g.Count()), time.Now())
		}
	}
}

// calls returns how many calls have reported: those with a "loadtest" event, and those with only
// an accounting event that has waited probeGrace for one.
func (s *eventSink) calls() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := int64(len(s.lt))
	for call, a := range s.acc {
		if _, ok := s.lt[call]; !ok && time.Since(a.at) >= probeGrace {
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
	for call, a := range s.acc {
		if cr, ok := s.lt[call]; ok {
			s.col.Report(call, cr.Stop, cr.Accounts())
			if cr.Hist != nil {
				s.col.mergeHist(account.Key(call), hdr.Import(cr.Hist))
			}
			continue
		}
		s.col.Report(call, a.Reason, account.FromAccounting(a.Accounting))
	}
	for call, cr := range s.lt {
		if _, ok := s.acc[call]; !ok {
			s.col.Report(call, cr.Stop, cr.Accounts())
			if cr.Hist != nil {
				s.col.mergeHist(account.Key(call), hdr.Import(cr.Hist))
			}
		}
	}
}

func (s *eventSink) close() {
	for _, sub := range s.subs {
		_ = sub.Unsubscribe()
	}
}
