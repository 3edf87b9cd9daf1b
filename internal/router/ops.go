package router

import (
	"encoding/json"
	"sort"
	"sync"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

// The operator verbs of the admin API (router.api.ingests, router.api.history): what
// callrouterctl shows beyond calls and workers. Every replica keeps the history on its own, from
// the lifecycle events it hears, so any replica answers.

// historyKinds are the event kinds a router keeps per call: lifecycle and accounting, never the
// processors' stream (speech, levels).
var historyKinds = []string{"start", "placed", "refused", "replaced", "reaped", "gap", "accounting", "stopped", "error", "end"}

// Bounds of the history: calls kept (the oldest forgotten first, ended or not), events per call
// (the oldest dropped first) and gap events per call (later ones only counted).
const (
	historyCalls     = 4096
	historyEvents    = 48
	historyGaps      = 16
	historyDataBytes = 2048 // an event body larger than this is kept without its data
)

type callHistory struct {
	events  []wire.HistoryEntry
	gaps    int
	dropped int
	ended   bool
}

// history is a router's bounded record of recent calls' lifecycle events, keyed by the
// tenant and call tokens of the event subject (so a body cannot file an event under another call).
type history struct {
	mu      sync.Mutex
	calls   map[[2]string]*callHistory
	order   [][2]string // insertion order, for eviction; may hold keys already evicted
	minutes [statusMinutes]minuteCount
}

// statusMinutes is how many minutes of placements and refusals the status page shows.
const statusMinutes = 10

// minuteCount is the placements and refusals heard in one minute (Unix minute).
type minuteCount struct {
	Minute  int64 `json:"minute"`
	Placed  int   `json:"placed"`
	Refused int   `json:"refused"`
}

// count adds a placed or refused event to its minute's bucket.
func (h *history) count(kind string, at time.Time) {
	if kind != "placed" && kind != "refused" {
		return
	}
	m := at.Unix() / 60
	b := &h.minutes[m%statusMinutes]
	if b.Minute != m {
		*b = minuteCount{Minute: m}
	}
	if kind == "placed" {
		b.Placed++
	} else {
		b.Refused++
	}
}

// perMinute returns the last statusMinutes minutes up to now, oldest first (zero where nothing
// was heard).
func (h *history) perMinute(now time.Time) []minuteCount {
	h.mu.Lock()
	defer h.mu.Unlock()
	cur := now.Unix() / 60
	out := make([]minuteCount, 0, statusMinutes)
	for m := cur - statusMinutes + 1; m <= cur; m++ {
		b := h.minutes[m%statusMinutes]
		if b.Minute != m {
			b = minuteCount{Minute: m}
		}
		out = append(out, b)
	}
	return out
}

func (h *history) add(tenantTok, callTok string, e wire.HistoryEntry) {
	k := [2]string{tenantTok, callTok}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.count(e.Kind, time.Now())
	if h.calls == nil {
		h.calls = map[[2]string]*callHistory{}
	}
	c := h.calls[k]
	if c == nil {
		c = &callHistory{}
		h.calls[k] = c
		h.order = append(h.order, k)
		for len(h.calls) > historyCalls && len(h.order) > 0 {
			delete(h.calls, h.order[0])
			h.order = h.order[1:]
		}
		if len(h.order) > 2*historyCalls { // keys evicted and re-added: compact
			live := h.order[:0:0]
			for _, o := range h.order {
				if h.calls[o] != nil {
					live = append(live, o)
				}
			}
			h.order = live
		}
	}
	if e.Kind == "gap" {
		if c.gaps >= historyGaps {
			c.dropped++
			return
		}
		c.gaps++
	}
	if e.Kind == "end" {
		c.ended = true
	}
	if len(c.events) >= historyEvents {
		c.events = append(c.events[:0], c.events[1:]...)
		c.dropped++
	}
	c.events = append(c.events, e)
}

func (h *history) get(tenantTok, callTok string) (wire.HistoryReply, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.calls[[2]string{tenantTok, callTok}]
	if c == nil {
		return wire.HistoryReply{}, false
	}
	out := wire.HistoryReply{Reply: wire.OK(), Events: append([]wire.HistoryEntry(nil), c.events...), Dropped: c.dropped, Ended: c.ended}
	sort.SliceStable(out.Events, func(i, j int) bool { return out.Events[i].Time.Before(out.Events[j].Time) })
	return out, true
}

// subscribeOps subscribes to the lifecycle events the history keeps (every replica hears them all).
func (r *Router) subscribeOps(add func(*nats.Subscription, error) error) error {
	for _, k := range historyKinds {
		if err := add(r.nc.Subscribe(subjects.ClassEvents+".*.*."+k, r.handler("router_history", r.onHistoryEvent))); err != nil {
			return err
		}
	}
	return nil
}

func (r *Router) onHistoryEvent(m *nats.Msg) {
	es, err := subjects.ParseEvent(m.Subject)
	if err != nil {
		return
	}
	var ev wire.Event
	if len(m.Data) > wire.MaxControlBytes || json.Unmarshal(m.Data, &ev) != nil {
		return
	}
	r.m.tenants.observe(es.Tenant, es.Kind, ev.Data)
	if len(ev.Data) > historyDataBytes {
		ev.Data = nil
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	r.hist.add(es.Tenant, es.Call, wire.HistoryEntry{Time: ev.Time, Kind: es.Kind, Epoch: ev.Epoch, Source: ev.Source, Data: ev.Data})
}

// onOpsAPI answers the operator verbs; it reports false for a verb it does not know.
func (r *Router) onOpsAPI(m *nats.Msg, verb string) bool {
	switch verb {
	case wire.APIIngests:
		bus.Respond(m, wire.IngestsReply{Reply: wire.OK(), Ingests: r.Ingests()})
	case wire.APIHistory:
		var q wire.CallQuery
		if err := json.Unmarshal(m.Data, &q); err != nil || q.Tenant == "" || q.Call == "" {
			bus.Respond(m, wire.HistoryReply{Reply: wire.Fail(wire.CodeBadRequest, `want {"v":1,"tenant":...,"call":...}`)})
			return true
		}
		h, ok := r.hist.get(subjects.Encode(q.Tenant), subjects.Encode(q.Call))
		if !ok {
			bus.Respond(m, wire.HistoryReply{Reply: wire.Fail(wire.CodeUnknown, "no events seen for "+q.Tenant+"/"+q.Call)})
			return true
		}
		bus.Respond(m, h)
	default:
		return false
	}
	return true
}

// Ingests returns the router's current view of the ingest nodes, sorted by id.
func (r *Router) Ingests() []wire.IngestView {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]wire.IngestView, 0, len(r.ingests))
	for id, in := range r.ingests {
		fresh := now.Sub(in.seen) <= 2*time.Duration(max(in.hb.IntervalMS, 1))*time.Millisecond
		out = append(out, wire.IngestView{ID: id, Active: in.hb.Active, Draining: in.hb.Draining,
			Ready: fresh && !in.hb.Draining, IntervalMS: in.hb.IntervalMS, LastSeen: in.seen})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
