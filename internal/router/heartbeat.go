package router

import (
	"encoding/json"
	"time"

	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

// Heartbeats come in two streams per worker and ingest (docs/protocol.md, "Heartbeats"): liveness
// on hb.<component>.<id>, small, read whole on every interval to judge deaths and eligibility; and
// the call list on hb.<component>.<id>.calls, full snapshots and deltas, which this file folds
// into one callState per component on a subscription of its own, so a large list never delays
// the liveness behind it. A version-1 heartbeat carries its calls inline; it is read as a
// liveness heartbeat plus a full snapshot.

// callState is a router's copy of one component's call list.
type callState[T any] struct {
	byID map[session.ID]T
	seq  uint64
	// known: a full snapshot was applied and no delta since was missed. What a component holds
	// is not judged (orphans, strands) while it is false; byID is still the best guess for the
	// admin API and a dead worker's last progress.
	known bool
	seen  time.Time // of the last message
}

func (s *callState[T]) apply(m *wire.CallState[T], key func(T) session.ID, now time.Time) {
	s.seen = now
	switch {
	case m.Full:
		s.byID = make(map[session.ID]T, len(m.Calls))
		for _, c := range m.Calls {
			s.byID[key(c)] = c
		}
		s.known = true
	case s.known && m.Seq == s.seq+1:
		for _, c := range m.Calls {
			s.byID[key(c)] = c
		}
		for _, id := range m.Gone {
			delete(s.byID, id)
		}
	default:
		s.known = false // a delta went missing (or this router started after it): wait for a snapshot
	}
	s.seq = m.Seq
}

func workerKey(c wire.WorkerCall) session.ID { return session.ID{Tenant: c.Tenant, Call: c.Call} }
func ingestKey(c wire.IngestCall) session.ID { return session.ID{Tenant: c.Tenant, Call: c.Call} }

// onCalls folds a call-list message into the component's state.
func (r *Router) onCalls(m *nats.Msg) {
	comp, id, err := subjects.ParseHeartbeatCalls(m.Subject)
	if err != nil {
		return
	}
	switch comp {
	case subjects.Worker:
		foldCalls(r, m.Data, id, r.wstate, workerKey)
	case subjects.Ingest:
		foldCalls(r, m.Data, id, r.istate, ingestKey)
	}
}

// foldCalls decodes component id's call-list message and applies it to its state in states.
func foldCalls[T any](r *Router, data []byte, id string, states map[string]*callState[T], key func(T) session.ID) {
	now := time.Now()
	var st wire.CallState[T]
	if json.Unmarshal(data, &st) != nil || st.ID != id || st.Seq == 0 {
		r.m.badHB.Inc()
		return
	}
	r.mu.Lock()
	stateOf(states, id).apply(&st, key, now)
	r.mu.Unlock()
}

// onHeartbeat records a liveness heartbeat (and a version-1 heartbeat's inline call list).
func (r *Router) onHeartbeat(m *nats.Msg) {
	comp, id, err := subjects.ParseHeartbeat(m.Subject)
	if err != nil {
		return
	}
	now := time.Now()
	switch comp {
	case subjects.Worker:
		var hb wire.WorkerHeartbeat
		if json.Unmarshal(m.Data, &hb) != nil || hb.ID != id || !validInterval(hb.IntervalMS) || hb.Capacity < 0 || hb.Active < 0 {
			r.m.badHB.Inc()
			return
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		if hb.V < wire.VHeartbeat {
			legacy(r.wstate, id, hb.Calls, workerKey, now)
		}
		hb.Calls = nil
		r.workers[id] = &workerInfo{hb: hb, seen: now}
	case subjects.Ingest:
		var hb wire.IngestHeartbeat
		if json.Unmarshal(m.Data, &hb) != nil || hb.ID != id || !validInterval(hb.IntervalMS) || hb.Active < 0 {
			r.m.badHB.Inc()
			return
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		if hb.V < wire.VHeartbeat {
			legacy(r.istate, id, hb.Calls, ingestKey, now)
			hb.Active = len(hb.Calls)
		}
		hb.Calls = nil
		r.ingests[id] = &ingestInfo{hb: hb, seen: now}
	}
}

// legacy applies a version-1 heartbeat's inline calls as a full snapshot.
func legacy[T any](states map[string]*callState[T], id string, calls []T, key func(T) session.ID, now time.Time) {
	s := stateOf(states, id)
	s.apply(&wire.CallState[T]{Seq: s.seq, Full: true, Calls: calls}, key, now)
}

func stateOf[T any](states map[string]*callState[T], id string) *callState[T] {
	s := states[id]
	if s == nil {
		s = &callState[T]{}
		states[id] = s
	}
	return s
}

// workerCalls returns worker id's calls and whether the list is known to be complete. Must hold r.mu.
func (r *Router) workerCalls(id string) (map[session.ID]wire.WorkerCall, bool) {
	if s := r.wstate[id]; s != nil {
		return s.byID, s.known
	}
	return nil, false
}

// ingestCalls returns ingest id's calls and whether the list is known to be complete. Must hold r.mu.
func (r *Router) ingestCalls(id string) (map[session.ID]wire.IngestCall, bool) {
	if s := r.istate[id]; s != nil {
		return s.byID, s.known
	}
	return nil, false
}

// forgetStates drops the call lists of components that have sent nothing for a minute. Must hold r.mu.
func (r *Router) forgetStates(now time.Time) {
	for id, s := range r.wstate {
		if _, live := r.workers[id]; !live && now.Sub(s.seen) > time.Minute {
			delete(r.wstate, id)
		}
	}
	for id, s := range r.istate {
		if _, live := r.ingests[id]; !live && now.Sub(s.seen) > time.Minute {
			delete(r.istate, id)
		}
	}
}
