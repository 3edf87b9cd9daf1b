package wire

import (
	"slices"
	"sort"

	"github.com/callrouter/callrouter/internal/session"
)

// FullEvery bounds how many call-state messages may pass between two full snapshots: a router
// that starts, or misses a delta, knows a component's calls again within FullEvery intervals
// (2.5 s at the default 500 ms: before a router's first orphan sweep, OrphanGrace after it starts,
// so a cold router judges as early as when the lists came whole).
const FullEvery = 5

// CallState is a worker's or ingest's call list, published on hb.<component>.<id>.calls every
// heartbeat interval, just before its liveness heartbeat. Seq goes up by one per message (from 1
// when the component starts). A Full message lists every call; any other is a delta against the
// message before it (Seq−1): Calls are the calls added or changed, Gone the ones that left. A
// receiver that misses a Seq ignores deltas until the next Full one.
type CallState[T any] struct {
	V     int          `json:"v"`
	ID    string       `json:"id"`
	Seq   uint64       `json:"seq"`
	Full  bool         `json:"full,omitempty"`
	Calls []T          `json:"calls"`
	Gone  []session.ID `json:"gone,omitempty"`
}

// WorkerState is published on hb.worker.<id>.calls.
type WorkerState = CallState[WorkerCall]

// IngestState is published on hb.ingest.<id>.calls.
type IngestState = CallState[IngestCall]

// StateTracker builds a component's call-state messages from its current calls: a full snapshot
// first, every FullEvery messages, and whenever a delta would carry half the list or more (a
// worker's calls all make progress every interval, so its messages are mostly full); a delta
// otherwise. Not safe for concurrent use.
type StateTracker[T any] struct {
	id        string
	key       func(T) session.ID
	equal     func(a, b T) bool
	seq       uint64
	sinceFull int
	last      map[session.ID]T
	spare     map[session.ID]T // the map before last, cleared and reused for the next
}

// NewWorkerStates tracks worker id's call list.
func NewWorkerStates(id string) *StateTracker[WorkerCall] {
	return &StateTracker[WorkerCall]{id: id, key: func(c WorkerCall) session.ID { return session.ID{Tenant: c.Tenant, Call: c.Call} },
		equal: func(a, b WorkerCall) bool {
			return a.Epoch == b.Epoch && a.Ingest == b.Ingest && slices.Equal(a.Progress, b.Progress)
		}}
}

// NewIngestStates tracks ingest id's call list.
func NewIngestStates(id string) *StateTracker[IngestCall] {
	return &StateTracker[IngestCall]{id: id, key: func(c IngestCall) session.ID { return session.ID{Tenant: c.Tenant, Call: c.Call} },
		equal: func(a, b IngestCall) bool {
			return a.Epoch == b.Epoch && a.Paused == b.Paused && slices.Equal(a.Placements, b.Placements)
		}}
}

// Next returns the message for the calls held now (each call once).
func (t *StateTracker[T]) Next(cur []T) CallState[T] {
	t.seq++
	next := t.spare
	if next == nil {
		next = make(map[session.ID]T, len(cur))
	}
	changed := []T{}
	for _, c := range cur {
		k := t.key(c)
		next[k] = c
		if old, ok := t.last[k]; !ok || !t.equal(old, c) {
			changed = append(changed, c)
		}
	}
	var gone []session.ID
	for k := range t.last {
		if _, ok := next[k]; !ok {
			gone = append(gone, k)
		}
	}
	m := CallState[T]{V: VHeartbeat, ID: t.id, Seq: t.seq}
	if t.last == nil || t.sinceFull+1 >= FullEvery || 2*(len(changed)+len(gone)) >= max(len(cur), 1) {
		m.Full, m.Calls = true, cur
		if m.Calls == nil {
			m.Calls = []T{}
		}
		t.sinceFull = 0
	} else {
		sort.Slice(gone, func(i, j int) bool { return gone[i].String() < gone[j].String() })
		m.Calls, m.Gone = changed, gone
		t.sinceFull++
	}
	clear(t.last)
	t.last, t.spare = next, t.last
	return m
}
