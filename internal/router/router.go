// Package router is the lifecycle manager: it builds its whole view from heartbeats, places calls
// on the least-loaded eligible worker of each pool, refuses when there is no capacity, declares
// silent components down, releases calls that a worker holds but no ingest owns, publishes
// lifecycle events and answers the admin API. It never sees a frame; any number of replicas share
// the "router" queue group.
package router

import (
	"context"
	"encoding/json"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/obs"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// maxUnreadHeartbeats: with more heartbeats than this waiting unread, the router is behind and
// judges no one this tick (a few are normal on a busy bus).
const maxUnreadHeartbeats = 64

type workerInfo struct {
	hb      wire.WorkerHeartbeat // liveness; the calls are in Router.wstate
	seen    time.Time
	pending int // offers accepted since the last heartbeat
}

func (w *workerInfo) eligible() bool {
	// Lagging is the worker's own judgement against its -lag-threshold, the same one that makes
	// it refuse offers and shed calls: one threshold, configured where the processing runs.
	return w.hb.Ready && !w.hb.Draining && !w.hb.Lagging && w.hb.Mode != "frame" && w.hb.Active+w.pending < w.hb.Capacity
}

type ingestInfo struct {
	hb   wire.IngestHeartbeat // liveness; the calls are in Router.istate
	seen time.Time
}

type lostKey struct {
	id   session.ID
	pool string
}

type lostProgress struct {
	progress []session.LegSeq
	epoch    uint32 // the epoch the reporting worker held the call at
	at       time.Time
}

// saveProgress keeps a worker's progress for call id in pool, reported at epoch. During a
// make-before-break hand-over the old and the new holder both list the call, the old one at the
// lower epoch and with the older position: the newer epoch wins, whatever order the lists are read
// in (a later resume from the old position would replay frames the new holder processed). An
// entry not refreshed for the orphan grace (every live holder's is, each sweep) no longer counts
// against a lower epoch: its call ended, and the id may be reused. Must hold r.mu.
func (r *Router) saveProgress(id session.ID, pool string, epoch uint32, progress []session.LegSeq, now time.Time) {
	k := lostKey{id, pool}
	if old, ok := r.lost[k]; ok && old.epoch > epoch && now.Sub(old.at) < r.cfg.OrphanGrace {
		return
	}
	r.lost[k] = lostProgress{progress, epoch, now}
}

// orphanSince is when a worker was first seen holding a call no ingest lists with it, at epoch.
type orphanSince struct {
	at    time.Time
	epoch uint32
}

type orphanKey struct {
	id     session.ID
	worker string
}

// Router is one router replica.
type Router struct {
	cfg    Config
	nc     *nats.Conn
	log    zerolog.Logger
	m      *metrics
	health *obs.Health
	start  atomic.Int64 // unix nanos when Run began; handlers read it

	mu      sync.Mutex
	workers map[string]*workerInfo
	ingests map[string]*ingestInfo
	wstate  map[string]*callState[wire.WorkerCall] // call lists by worker (heartbeat.go)
	istate  map[string]*callState[wire.IngestCall] // call lists by ingest
	orphans map[orphanKey]orphanSince
	lost    map[lostKey]lostProgress // last progress workers reported for calls (live or lost), for resumes
	strands map[strandKey]time.Time  // placements an ingest lists that their worker does not hold, since
	reaped  map[orphanKey]time.Time  // calls this router released as orphans, when
	silent  map[string]time.Time     // ingests declared down, when

	hbSub     *nats.Subscription
	lastTick  time.Time
	lastSweep time.Time // of the orphan sweep

	hist     history // recent calls' lifecycle events, for router.api.history (ops.go)
	inflight chan struct{}
	g        guard.Group // placements, each on a goroutine started by the place handler
	closed   atomic.Bool
}

// Deps are the router's collaborators.
type Deps struct {
	NC       *nats.Conn
	Log      zerolog.Logger
	Registry prometheus.Registerer
	Health   *obs.Health
}

// New validates cfg and builds a router; it does no I/O.
func New(cfg Config, d Deps) (*Router, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if d.Registry == nil {
		d.Registry = prometheus.NewRegistry()
	}
	if d.Health == nil {
		d.Health = &obs.Health{}
	}
	r := &Router{
		cfg: cfg, nc: d.NC, log: d.Log.With().Str("router", cfg.ID).Logger(), m: newMetrics(d.Registry), health: d.Health,
		workers: map[string]*workerInfo{}, ingests: map[string]*ingestInfo{},
		wstate: map[string]*callState[wire.WorkerCall]{}, istate: map[string]*callState[wire.IngestCall]{},
		orphans: map[orphanKey]orphanSince{}, lost: map[lostKey]lostProgress{},
		strands: map[strandKey]time.Time{}, reaped: map[orphanKey]time.Time{}, silent: map[string]time.Time{}, inflight: make(chan struct{}, cfg.MaxInflight),
	}
	d.Registry.MustRegister(tenantCalls{r})
	return r, nil
}

// Run serves until ctx ends and returns after every goroutine it started has exited.
func (r *Router) Run(ctx context.Context) error {
	r.start.Store(time.Now().UnixNano())
	var subs []*nats.Subscription
	add := func(s *nats.Subscription, err error) error {
		if err == nil {
			subs = append(subs, s)
		}
		return err
	}
	defer func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
		r.g.Close()
	}()
	hbSub, err := r.nc.Subscribe(subjects.AllLiveness, r.handler("router_heartbeat", r.onHeartbeat))
	if err := add(hbSub, err); err != nil {
		return err
	}
	r.hbSub = hbSub
	// Call lists on a subscription (and so a goroutine) of their own: a large one never delays
	// the liveness heartbeats that deaths are judged by.
	if err := add(r.nc.Subscribe(subjects.AllCallStates, r.handler("router_calls", r.onCalls))); err != nil {
		return err
	}
	if err := add(r.nc.QueueSubscribe(subjects.Place, subjects.RouterQueue, r.handler("router_place", r.onPlace))); err != nil {
		return err
	}
	if err := add(r.nc.QueueSubscribe(subjects.APIPrefix+">", subjects.RouterQueue, r.handler("router_api", r.onAPI))); err != nil {
		return err
	}
	if err := r.subscribeOps(add); err != nil {
		return err
	}
	if err := r.nc.Flush(); err != nil {
		return err
	}
	r.health.SetLive(true)
	r.health.SetReady(true)
	r.log.Info().Msg("router running")
	// Deaths are checked every 100 ms so detection takes misses × interval, not a tick more.
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	var lastHB time.Time
	for {
		select {
		case <-ctx.Done():
			r.health.SetReady(false)
			return nil
		case now := <-t.C:
			r.tick(now.Sub(lastHB) >= r.cfg.HeartbeatInterval)
			if now.Sub(lastHB) >= r.cfg.HeartbeatInterval {
				lastHB = now
			}
		}
	}
}

// tick detects deaths, forgets what is too old to matter, sweeps orphans and strands, and
// heartbeats.
func (r *Router) tick(heartbeat bool) {
	now := time.Now()
	if heartbeat {
		defer r.publishHeartbeat()
	}
	// A starved router must not mistake its own delay for everyone's death: when its tick runs late
	// or heartbeats wait unread in its subscription, it judges no one this round.
	late := !r.lastTick.IsZero() && now.Sub(r.lastTick) > 250*time.Millisecond
	r.lastTick = now
	if n, _, err := r.hbSub.Pending(); late || err != nil || n > maxUnreadHeartbeats {
		return
	}
	var sw sweep
	r.mu.Lock()
	downs := r.judge(now)
	r.expire(now)
	// The sweep reads every call list, so it runs a few times per grace period, not every tick.
	if now.Sub(r.started()) > r.cfg.OrphanGrace && now.Sub(r.lastSweep) >= max(r.cfg.OrphanGrace/3, 100*time.Millisecond) {
		r.lastSweep = now
		sw = r.sweepOrphans(now)
		sw.notices = r.reconcile(now, sw.held)
	}
	r.m.workers.Set(float64(len(r.workers)))
	r.m.ingests.Set(float64(len(r.ingests)))
	r.mu.Unlock()

	for _, d := range downs {
		r.log.Warn().Str("down", d.Component).Str("down_id", d.ID).Msg("declared down")
		r.m.downs.WithLabelValues(d.Component).Inc()
		_ = bus.Publish(r.nc, subjects.Bcast(subjects.TopicDown), d)
	}
	r.release(sw.releases)
	r.notify(sw.notices)
}

// judge declares down the workers and ingests silent for their misses, keeping a dead worker's
// last progress for the re-placements. Must hold r.mu.
func (r *Router) judge(now time.Time) []wire.Down {
	var downs []wire.Down
	for id, w := range r.workers {
		if now.Sub(w.seen) > time.Duration(r.cfg.Misses*max(w.hb.IntervalMS, 1))*time.Millisecond {
			delete(r.workers, id)
			calls, _ := r.workerCalls(id) // complete or not, the best progress there is
			for cid, c := range calls {
				r.saveProgress(cid, w.hb.Pool, c.Epoch, c.Progress, now)
			}
			downs = append(downs, wire.Down{V: wire.V, Component: subjects.Worker, ID: id, Reason: "missed heartbeats", By: r.cfg.ID})
		}
	}
	for id, in := range r.ingests {
		if now.Sub(in.seen) > time.Duration(r.cfg.Misses*max(in.hb.IntervalMS, 1))*time.Millisecond {
			delete(r.ingests, id)
			r.silent[id] = now
			downs = append(downs, wire.Down{V: wire.V, Component: subjects.Ingest, ID: id, Reason: "missed heartbeats", By: r.cfg.ID})
		}
	}
	return downs
}

// expire forgets progress, reaps and silences older than a minute, routers past their misses and
// the call lists of components gone for a minute. Must hold r.mu.
func (r *Router) expire(now time.Time) {
	for k, l := range r.lost {
		if now.Sub(l.at) > time.Minute {
			delete(r.lost, k)
		}
	}
	for k, t := range r.reaped {
		if now.Sub(t) > time.Minute {
			delete(r.reaped, k)
		}
	}
	for k, t := range r.silent {
		if now.Sub(t) > time.Minute {
			delete(r.silent, k)
		}
	}
	r.forgetStates(now)
}

// sweep is what one orphan sweep decided: releases to send, the newest epoch each worker holds
// each call at (for reconcile), and the reconciliation notices.
type sweep struct {
	releases []release
	held     map[orphanKey]uint32
	notices  []notice
}

type release struct {
	worker string
	msg    wire.Release
}

// sweepOrphans finds the calls a worker holds that no live ingest owns at that worker, and
// releases those orphaned for the grace. A worker superseded by a newer epoch is left the same
// grace: during a make-before-break hand-over it stops by itself at the new epoch's first frame.
// Workers and ingests whose call lists are not known complete are not judged. Must hold r.mu.
func (r *Router) sweepOrphans(now time.Time) sweep {
	sw := sweep{held: map[orphanKey]uint32{}}
	seen := map[orphanKey]bool{}
	for wid, w := range r.workers {
		calls, known := r.workerCalls(wid)
		if !known {
			continue
		}
		for id, c := range calls {
			key := orphanKey{id, wid}
			sw.held[key] = max(sw.held[key], c.Epoch)
			r.saveProgress(id, w.hb.Pool, c.Epoch, c.Progress, now)
			if r.owned(id, wid, c.Ingest) {
				continue
			}
			seen[key] = true
			// A holder whose epoch changed is judged afresh: an offer that kept this worker
			// advanced the call in place (the next attempt after an offer to it was abandoned),
			// and ingest's list may not show that placement yet.
			since, ok := r.orphans[key]
			if !ok || since.epoch != c.Epoch {
				since = orphanSince{now, c.Epoch}
				r.orphans[key] = since
			}
			if now.Sub(since.at) > r.cfg.OrphanGrace {
				delete(r.orphans, key)
				r.reaped[key] = now
				sw.releases = append(sw.releases, release{wid, wire.Release{V: wire.V, Tenant: c.Tenant, Call: c.Call, Epoch: c.Epoch, Reason: "orphan"}})
			}
		}
	}
	for k := range r.orphans {
		if !seen[k] {
			delete(r.orphans, k)
		}
	}
	return sw
}

// release sends the orphan releases, fire and forget: the next call list shows whether they went.
func (r *Router) release(rs []release) {
	for _, rel := range rs {
		r.m.reaped.Inc()
		r.log.Info().Str("tenant", rel.msg.Tenant).Str("call", rel.msg.Call).Str("worker_id", rel.worker).Msg("releasing orphan call")
		if data, err := json.Marshal(rel.msg); err == nil {
			_ = r.nc.Publish(subjects.WorkerVerb(rel.worker, subjects.WorkerVerbRelease), data)
		}
		r.event(rel.msg.Tenant, rel.msg.Call, rel.msg.Epoch, "reaped", map[string]string{"worker": rel.worker, "reason": "no ingest owns the call"})
	}
}

func (r *Router) publishHeartbeat() {
	r.mu.Lock()
	workers := len(r.workers)
	r.mu.Unlock()
	_ = bus.Publish(r.nc, subjects.Heartbeat(subjects.Router, r.cfg.ID), wire.RouterHeartbeat{V: wire.V, ID: r.cfg.ID,
		IntervalMS: int(r.cfg.HeartbeatInterval / time.Millisecond), Workers: workers})
}

// lastProgress returns the progress a dead worker last reported for a call. Must hold r.mu.
func (r *Router) lastProgress(id session.ID, pool string) []session.LegSeq {
	return r.lost[lostKey{id, pool}].progress
}

// owned reports whether a live ingest lists call id as placed on worker wid, or might (its list
// is not known complete). A worker left behind by a newer epoch is not an owner. Must hold r.mu.
func (r *Router) owned(id session.ID, wid, ingest string) bool {
	if r.ingests[ingest] == nil {
		return false
	}
	calls, known := r.ingestCalls(ingest)
	if !known {
		return true
	}
	c, ok := calls[id]
	if !ok {
		return false
	}
	for _, p := range c.Placements {
		if p.Worker == wid {
			return true
		}
	}
	return false
}

func (r *Router) event(tenant, call string, epoch uint32, kind string, data any) {
	_ = bus.PublishEvent(r.nc, wire.Event{Kind: kind, Tenant: tenant, Call: call, Epoch: epoch, Source: "router/" + r.cfg.ID}, data)
}

// Close refuses new placements and waits for in-flight ones; safe to call more than once.
func (r *Router) Close() {
	if r.closed.CompareAndSwap(false, true) {
		r.g.Close()
	}
}

// handlerHook, when set (by tests, before Run), runs first in every NATS handler with the
// handler's name: a test makes it panic to prove the router keeps serving.
var handlerHook func(where string)

// handler contains panics in h: the message is dropped and counted, the router goes on.
func (r *Router) handler(where string, h nats.MsgHandler) nats.MsgHandler {
	return guard.Handler(where, r.log, func(m *nats.Msg) {
		if handlerHook != nil {
			handlerHook(where)
		}
		h(m)
	})
}

func (r *Router) started() time.Time { return time.Unix(0, r.start.Load()) }

// validInterval bounds a heartbeat's announced interval: one claiming an hour would never be
// declared down.
func validInterval(ms int) bool { return ms >= 1 && ms <= 60_000 }

// Workers returns the router's current view of the workers, sorted by id.
func (r *Router) Workers() []wire.WorkerView {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]wire.WorkerView, 0, len(r.workers))
	for id, w := range r.workers {
		out = append(out, wire.WorkerView{ID: id, Pool: w.hb.Pool, Mode: w.hb.Mode, Capacity: w.hb.Capacity, Active: w.hb.Active + w.pending,
			LagMS: w.hb.LagMS, Ready: w.hb.Ready, Draining: w.hb.Draining, Eligible: w.eligible(), LastSeen: w.seen})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
