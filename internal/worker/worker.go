// Package worker is the worker runtime: it accepts placement offers up to its capacity, holds one
// ordered per-call subscription for each call it is given, runs the pool's processors on each
// call's own goroutine behind a bounded queue, heartbeats its load and per-call progress, reaps
// idle calls, steps aside when a higher epoch shows up, and on shutdown migrates its calls away.
package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/obs"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/trace"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// offerSubscribed, when set (by tests), runs once an offer's subscriptions are in place, just
// before the offer is accepted, with the offer's call and epoch.
var offerSubscribed atomic.Pointer[func(session.ID, uint32)]

// replayAsking, when set (by tests), runs on the call goroutine just before a replay request is
// sent, with the call and the epoch the request carries.
var replayAsking atomic.Pointer[func(session.ID, uint32)]

// stoppingWait bounds how long an offer for a call that is stopping waits for it to go before
// taking it fresh; it stays below the router's default offer timeout (1 s).
const stoppingWait = 300 * time.Millisecond

// Worker is one worker process's runtime.
type Worker struct {
	cfg    Config
	nc     *nats.Conn
	log    zerolog.Logger
	m      *metrics
	health *obs.Health
	procs  []proc.Processor

	mu       sync.Mutex
	calls    map[session.ID]*call
	draining bool
	// group runs every goroutine the worker starts outside Run's own: call goroutines and what
	// NATS callbacks and ticks set off (release answers, migrations, hand-backs). Once shutdown
	// closes it, callbacks that fire late are refused instead of racing with the wait.
	group guard.Group

	// Control requests of every call, on one channel read by one goroutine (ctl.go).
	ctl      chan *nats.Msg
	ctlMu    sync.Mutex
	ctlCalls map[*nats.Subscription]*call // each call's control subscription

	// Clocks. start holds a monotonic reading: mono() (nanoseconds since New) never steps, so
	// fencing, idle reaping and arrival times do not move when the wall clock is stepped.
	// wall0 is Config.Now at New: arrival times are wall0+mono(), on the scale of capture times
	// but only offset from them by a constant, which the per-call delay baseline absorbs.
	start time.Time
	wall0 int64

	lagSince int64 // mono() when lag first went over the threshold; 0 when under
	lagging  atomic.Bool
	lastTick atomic.Int64 // mono() at the last heartbeat tick; see Config.FenceAfter
	closed   atomic.Bool
	op       opDrain                             // a drain requested over NATS (drainverb.go)
	hbMu     sync.Mutex                          // one heartbeat at a time: states is a sequence
	states   *wire.StateTracker[wire.WorkerCall] // the call list's snapshots and deltas, under hbMu

	abandoned map[session.ID]abandoned // offers their router gave up on, under mu (abandon.go)

	// Offers being set up (offers.go): each call's offers waiting behind the one being set up,
	// and one token per offer being set up.
	offerMu  sync.Mutex
	offerQ   map[session.ID][]func(bool)
	offerSem chan struct{}
}

// Deps are the worker's collaborators.
type Deps struct {
	NC       *nats.Conn
	Log      zerolog.Logger
	Registry prometheus.Registerer
	Health   *obs.Health // may be nil
}

// New validates cfg and builds a worker; it does no I/O.
func New(cfg Config, d Deps) (*Worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	procs, err := proc.Build(cfg.Processors, cfg.ProcessorOptions)
	if err != nil {
		return nil, err
	}
	if d.Registry == nil {
		d.Registry = prometheus.NewRegistry()
	}
	proc.RegisterMetrics(d.Registry)
	if d.Health == nil {
		d.Health = &obs.Health{}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Worker{
		cfg: cfg, nc: d.NC, log: d.Log.With().Str("worker", cfg.ID).Str("pool", cfg.Pool).Logger(),
		m: newMetrics(d.Registry), health: d.Health, procs: procs,
		calls: map[session.ID]*call{}, ctl: make(chan *nats.Msg, ctlQueue), ctlCalls: map[*nats.Subscription]*call{},
		start: time.Now(), wall0: cfg.Now().UnixNano(), states: wire.NewWorkerStates(cfg.ID),
		offerQ: map[session.ID][]func(bool){}, offerSem: make(chan struct{}, offerConcurrency),
	}, nil
}

// mono returns the worker's monotonic time: nanoseconds since New (at least 1, so 0 can mean
// never).
func (w *Worker) mono() int64 { return int64(time.Since(w.start)) + 1 }

// ID returns the worker's id.
func (w *Worker) ID() string { return w.cfg.ID }

// Run serves offers and releases until ctx ends, then drains (migrates its calls away, up to the
// drain timeout) and returns after every goroutine it started has exited.
func (w *Worker) Run(ctx context.Context) error {
	var subs []*nats.Subscription
	sub := func(s *nats.Subscription, err error) error {
		if err == nil {
			subs = append(subs, s)
		}
		return err
	}
	defer func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
	}()
	// Started before offers are taken and stopped after every call has ended (drain waits for
	// them), so every call's control requests are served for as long as the call runs.
	stopCtl, ctlDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(ctlDone)
		w.serveCtl(stopCtl)
	}()
	defer func() {
		close(stopCtl)
		<-ctlDone
	}()
	// Offers are set up on goroutines of w.group (dispatchOffer) and releases run in it (Do), so
	// the shutdown waits for one being handled: the client's goroutine may still be in it after
	// the subscription is gone.
	if err := sub(w.nc.Subscribe(subjects.WorkerVerb(w.cfg.ID, subjects.WorkerVerbOffer), guard.Handler("worker_offer", w.log, w.onOffer))); err != nil {
		return err
	}
	if err := sub(w.nc.Subscribe(subjects.WorkerVerb(w.cfg.ID, subjects.WorkerVerbRelease), guard.Handler("worker_release", w.log, func(m *nats.Msg) {
		w.group.Do(func() { w.onRelease(m) })
	}))); err != nil {
		return err
	}
	if err := w.subscribeDrain(ctx, sub); err != nil {
		return err
	}
	if err := w.nc.Flush(); err != nil {
		return fmt.Errorf("worker: flush: %w", err)
	}
	w.health.SetLive(true)
	w.health.SetReady(true)
	w.log.Info().Int("capacity", w.cfg.Capacity).Msg("worker running")

	t := time.NewTicker(w.cfg.HeartbeatInterval)
	defer t.Stop()
	w.lastTick.Store(w.mono())
	w.heartbeat()
	for {
		select {
		case <-t.C:
			w.tick()
		case <-ctx.Done():
			w.drain()
			return nil
		}
	}
}

// tick reaps idle calls, updates lag, sheds load and heartbeats.
func (w *Worker) tick() {
	now := w.mono()
	w.beat(now)
	var worst int64
	var worstCall *call
	// Under w.mu, so an offer that advances a call in place (and refreshes lastFrame) is
	// ordered with the decision to reap it.
	w.mu.Lock()
	w.expireAbandonedLocked(now)
	for _, c := range w.calls {
		if idle := now - c.lastFrame.Load(); idle > int64(w.cfg.IdleTimeout) {
			c.stop(proc.StopIdle)
			continue
		}
		if l := c.lagNS.Load(); l > worst {
			worst, worstCall = l, c
		}
	}
	w.mu.Unlock()
	w.m.lag.Set(float64(worst) / 1e9)
	over := time.Duration(worst) > w.cfg.LagThreshold
	switch {
	case !over:
		w.lagSince = 0
	case w.lagSince == 0:
		w.lagSince = now
	case time.Duration(now-w.lagSince) > w.cfg.ShedAfter && worstCall != nil:
		// Shed the worst call to another worker, make-before-break, then give it time to go.
		w.lagSince = now
		w.log.Warn().Dur("lag", time.Duration(worst)).Str("call", worstCall.spec.Call).Msg("lagging: shedding a call")
		w.group.Go(func() { w.migrate(worstCall, wire.ReasonRebalance) })
	}
	w.lagging.Store(over)
	w.heartbeat()
}

// beat records a run of the heartbeat loop (the tick, or the drain's heartbeats) at now. If the
// loop had stalled past the fence, every call not moved away already was (or is about to be)
// stopped by its own goroutine (call.process), and the routers may have declared this worker
// down: it drops each such call without publishing and hands it back to its ingest with where it
// stopped, so that the call is re-placed now rather than when reconciliation finds it.
func (w *Worker) beat(now int64) {
	if w.fenced(now) {
		w.log.Warn().Msg("heartbeats stalled past the fence: dropping every call without publishing")
		for _, c := range w.snapshot() {
			if c.moved.Load() {
				continue // the rest of its epoch is this worker's alone (see call.process)
			}
			c.stop(proc.StopSuperseded)
			w.handBackOnce(c)
		}
	}
	w.lastTick.Store(now)
}

func (w *Worker) snapshot() []*call {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]*call, 0, len(w.calls))
	for _, c := range w.calls {
		out = append(out, c)
	}
	return out
}

// heartbeat publishes the call list (a snapshot or a delta) and then the liveness heartbeat.
func (w *Worker) heartbeat() {
	w.hbMu.Lock()
	defer w.hbMu.Unlock()
	calls := w.snapshot()
	sort.Slice(calls, func(i, j int) bool { return calls[i].spec.Call < calls[j].spec.Call })
	w.mu.Lock()
	draining := w.draining
	w.mu.Unlock()
	list := make([]wire.WorkerCall, 0, len(calls))
	var worst int64
	for _, c := range calls {
		worst = max(worst, c.lagNS.Load())
		list = append(list, wire.WorkerCall{Tenant: c.spec.Tenant, Call: c.spec.Call, Epoch: c.curEpoch(), Ingest: c.ingest, Progress: c.progress()})
	}
	if err := bus.Publish(w.nc, subjects.HeartbeatCalls(subjects.Worker, w.cfg.ID), w.states.Next(list)); err != nil {
		w.log.Warn().Err(err).Msg("call list not published")
	}
	hb := wire.WorkerHeartbeat{V: wire.VHeartbeat, ID: w.cfg.ID, Pool: w.cfg.Pool, Mode: ModeSession, Tenants: w.cfg.Tenants, Capacity: w.cfg.Capacity,
		Active: len(calls), LagMS: float64(worst) / 1e6, Lagging: w.lagging.Load(), Ready: w.health.Ready() && !draining, Draining: draining,
		IntervalMS: int(w.cfg.HeartbeatInterval / time.Millisecond)}
	if err := bus.Publish(w.nc, subjects.Heartbeat(subjects.Worker, w.cfg.ID), hb); err != nil {
		w.log.Warn().Err(err).Msg("heartbeat not published")
	}
}

// onOffer reads an offer on the offer subscription's goroutine, answers one that is malformed
// at once, and hands a valid one to dispatchOffer, which sets it up on a goroutine of its own.
func (w *Worker) onOffer(m *nats.Msg) {
	o := new(wire.Offer)
	ctx, span := trace.Start(trace.Extract(context.Background(), m.Header), "worker.offer", trace.Server, trace.String("callrouter.worker", w.cfg.ID))
	reply := func(r wire.Reply) {
		if !r.OK {
			trace.Fail(span, r.Code+": "+r.Reason)
		}
		w.m.offers.WithLabelValues(map[bool]string{true: "accepted", false: r.Code}[r.OK]).Inc()
		bus.Respond(m, wire.OfferReply{Reply: r, Worker: w.cfg.ID})
	}
	refuse := func(r wire.Reply) {
		reply(r)
		span.End()
	}
	if len(m.Data) > maxOfferBytes {
		refuse(wire.Fail(wire.CodeBadRequest, fmt.Sprintf("offer of %d bytes: at most %d", len(m.Data), maxOfferBytes)))
		return
	}
	if err := json.Unmarshal(m.Data, o); err != nil {
		refuse(wire.Fail(wire.CodeBadRequest, err.Error()))
		return
	}
	trace.Annotate(ctx, append(trace.Call(o.Call.Tenant, o.Call.Call), trace.Epoch(o.Epoch))...)
	if err := checkOffer(o, w.cfg.Pool); err != nil {
		refuse(wire.Fail(wire.CodeBadRequest, err.Error()))
		return
	}
	if len(w.cfg.Tenants) > 0 && !slices.Contains(w.cfg.Tenants, o.Call.Tenant) {
		refuse(wire.Fail(wire.CodeBadRequest, fmt.Sprintf("tenant %q: this worker serves only %v", o.Call.Tenant, w.cfg.Tenants)))
		return
	}
	w.dispatchOffer(o.Call.ID, func(ok bool) {
		defer span.End()
		if !ok {
			reply(wire.Fail(wire.CodeDraining, "worker is shutting down"))
			return
		}
		w.setUp(ctx, o, reply)
	})
}

// setUp takes a valid offer: it reserves the call's slot, subscribes the call's subjects and
// starts the call, answering through reply. Offers of one call never run it at once
// (dispatchOffer).
func (w *Worker) setUp(ctx context.Context, o *wire.Offer, reply func(wire.Reply)) {
	id := o.Call.ID
	w.mu.Lock()
	if old := w.calls[id]; old != nil {
		if cur := old.curEpoch(); cur > o.Epoch {
			w.mu.Unlock()
			reply(wire.Fail(wire.CodeStale, fmt.Sprintf("holding epoch %d", cur)))
			return
		}
		// A retried offer, or ingest re-placing the call's other pools and keeping this worker:
		// advance the epoch in place, without a gap. The offer counts as a sign of life, under
		// w.mu like the idle reaper, so the call is not reaped just after the answer.
		old.lastFrame.Store(w.mono())
		if old.advance(o.Epoch) {
			w.mu.Unlock()
			reply(wire.OK())
			return
		}
		// The call is stopping (reaped, released, superseded): answering OK would leave ingest
		// believing it placed while the call removes itself. Wait for it to go, then take the
		// call fresh at the offered epoch and resume point.
		w.mu.Unlock()
		select {
		case <-old.done:
		case <-time.After(stoppingWait):
			reply(wire.Fail(wire.CodeFull, "call is stopping"))
			return
		}
		w.mu.Lock()
		if w.calls[id] != nil {
			w.mu.Unlock()
			reply(wire.Fail(wire.CodeFull, "call is stopping"))
			return
		}
	}
	if w.wasAbandonedLocked(id, o.Epoch) {
		w.mu.Unlock()
		reply(wire.Fail(wire.CodeStale, fmt.Sprintf("offer at epoch %d abandoned by its router", o.Epoch)))
		return
	}
	if w.draining {
		w.mu.Unlock()
		reply(wire.Fail(wire.CodeDraining, "worker is draining"))
		return
	}
	if len(w.calls) >= w.cfg.Capacity {
		w.mu.Unlock()
		reply(wire.Fail(wire.CodeFull, fmt.Sprintf("%d/%d calls", w.cfg.Capacity, w.cfg.Capacity)))
		return
	}
	if w.lagging.Load() {
		w.mu.Unlock()
		reply(wire.Fail(wire.CodeFull, "worker is lagging"))
		return
	}
	c := newCall(w, o)
	w.calls[id] = c // the slot is reserved before anything else happens
	w.m.calls.Set(float64(len(w.calls)))
	w.mu.Unlock()
	started := false
	defer func() { // also while a panic unwinds: the slot is not kept by a call that never ran
		if !started {
			c.unsubscribe()
			w.forget(c)
			close(c.done) // a release that found the call meanwhile is not left waiting
		}
	}()

	// No flush before the answer: the subscriptions and the answer go out on the one connection,
	// and the server handles a connection's messages in order, so the call's interest is
	// registered before the answer is routed, let alone before ingest, told by the router, sends
	// a frame. A flush would add a round trip that, at load, waits behind every frame the server
	// has queued for this connection.
	if err := c.subscribe(); err != nil {
		reply(wire.Fail(wire.CodeInternal, err.Error()))
		return
	}
	if f := offerSubscribed.Load(); f != nil {
		(*f)(id, o.Epoch)
	}
	// The router's release that abandons this offer may have been handled meanwhile: on a loaded
	// worker it often is, as it was sent an offer timeout after the offer, which waited as long in
	// the subscription. Refused now, the call is not started only to be dropped (superseded).
	w.mu.Lock()
	abandoned := w.wasAbandonedLocked(id, o.Epoch)
	w.mu.Unlock()
	if abandoned {
		reply(wire.Fail(wire.CodeStale, fmt.Sprintf("offer at epoch %d abandoned by its router", o.Epoch)))
		return
	}
	if trace.Recording(ctx) {
		// Ended by the call goroutine once the first frame is processed: offer → first frame.
		_, c.first = trace.Start(ctx, "worker.first_frame", trace.Internal, append(trace.Call(o.Call.Tenant, o.Call.Call), trace.Epoch(o.Epoch))...)
	}
	if !w.group.Go(c.run) {
		if c.first != nil {
			c.first.End()
		}
		reply(wire.Fail(wire.CodeDraining, "worker is shutting down"))
		return
	}
	started = true
	c.log.Info().Msg("call accepted")
	reply(wire.OK())
}

func (w *Worker) onRelease(m *nats.Msg) {
	var r wire.Release
	if len(m.Data) > maxReleaseBytes {
		bus.Respond(m, wire.ReleaseReply{Reply: wire.Fail(wire.CodeBadRequest, fmt.Sprintf("release of %d bytes: at most %d", len(m.Data), maxReleaseBytes))})
		return
	}
	if err := json.Unmarshal(m.Data, &r); err != nil {
		bus.Respond(m, wire.ReleaseReply{Reply: wire.Fail(wire.CodeBadRequest, err.Error())})
		return
	}
	if err := checkRelease(&r); err != nil {
		bus.Respond(m, wire.ReleaseReply{Reply: wire.Fail(wire.CodeBadRequest, err.Error())})
		return
	}
	w.mu.Lock()
	c := w.calls[session.ID{Tenant: r.Tenant, Call: r.Call}]
	if r.Reason == wire.ReasonOfferAbandoned && r.Epoch > 0 {
		w.abandonLocked(session.ID{Tenant: r.Tenant, Call: r.Call}, r.Epoch, w.mono())
	}
	w.mu.Unlock()
	if c == nil {
		bus.Respond(m, wire.ReleaseReply{Reply: wire.Fail(wire.CodeUnknown, "not holding "+r.Tenant+"/"+r.Call)})
		return
	}
	cur := c.curEpoch()
	if r.Epoch != 0 && r.Epoch < cur {
		bus.Respond(m, wire.ReleaseReply{Reply: wire.Fail(wire.CodeStale, fmt.Sprintf("holding epoch %d", cur))})
		return
	}
	reason := proc.StopReleased
	if r.Epoch > cur || r.Reason == wire.ReasonOfferAbandoned {
		reason = proc.StopSuperseded
	}
	if !c.release(r.Epoch, reason) { // an offer advanced the call since cur was read
		bus.Respond(m, wire.ReleaseReply{Reply: wire.Fail(wire.CodeStale, fmt.Sprintf("holding epoch %d", c.curEpoch()))})
		return
	}
	answer := func() {
		<-c.done
		bus.Respond(m, wire.ReleaseReply{Reply: wire.OK(), Progress: c.progress()})
	}
	if !w.group.Go(answer) {
		answer() // shutting down: the call is being stopped anyway, and the wait is short
	}
}

// removeCall frees a call's slot; called by the call goroutine as it finishes.
func (w *Worker) removeCall(c *call) {
	w.forget(c)
}

func (w *Worker) forget(c *call) {
	w.mu.Lock()
	if w.calls[c.spec.ID] == c {
		delete(w.calls, c.spec.ID)
	}
	w.m.calls.Set(float64(len(w.calls)))
	w.mu.Unlock()
}

// migrate asks the call's ingest to re-place it elsewhere, make-before-break: the new owner
// subscribes first, then ingest bumps the epoch and this worker stops at the last frame of its
// own epoch.
func (w *Worker) migrate(c *call, reason string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w.migrateCtx(ctx, c, reason)
}

// migrateCtx reports whether ingest moved the call.
func (w *Worker) migrateCtx(ctx context.Context, c *call, reason string) bool {
	c.migrating.Store(true)
	req := wire.Migrate{V: wire.V, Tenant: c.spec.Tenant, Call: c.spec.Call, Epoch: c.curEpoch(), Worker: w.cfg.ID, Reason: reason}
	var rep wire.Reply
	if err := bus.Request(ctx, w.nc, subjects.IngestVerb(c.ingest, subjects.IngestVerbPlace), req, &rep); err != nil {
		c.log.Warn().Err(err).Str("reason", reason).Msg("migration request failed")
		return false
	}
	if !rep.OK {
		c.log.Warn().Str("code", rep.Code).Str("why", rep.Reason).Msg("migration refused")
	}
	if rep.OK {
		c.moved.Store(true)
	}
	return rep.OK
}

// migrateUntil asks ingest to move the call until it has moved, it has ended or ctx is done: a
// drain keeps trying for a call whose re-placement was refused (every other worker full for a
// moment, an offer that timed out on a loaded machine) rather than dropping it at the deadline.
func (w *Worker) migrateUntil(ctx context.Context, c *call, reason string) {
	for !w.migrateCtx(ctx, c, reason) {
		select {
		case <-ctx.Done():
			return
		case <-c.done:
			return
		case <-time.After(w.cfg.HeartbeatInterval):
		}
	}
}

// handBackOnce hands c back (see handBack) unless that was done already: a call that met the
// fence itself, on a frame (call.process), is handed back by its own goroutine, as it may have
// gone before the heartbeat loop runs again and finds the stall.
func (w *Worker) handBackOnce(c *call) {
	if c.handedBack.CompareAndSwap(false, true) {
		w.group.Go(func() { w.handBack(c) })
	}
}

// handBack tells a fenced call's ingest that this worker no longer holds it, with where it
// stopped, so the call is re-placed even if no router declared this worker down. If it was
// already re-placed, ingest ignores the notice.
func (w *Worker) handBack(c *call) {
	<-c.done
	req := wire.Migrate{V: wire.V, Tenant: c.spec.Tenant, Call: c.spec.Call, Epoch: c.curEpoch(), Worker: w.cfg.ID,
		Reason: wire.ReasonFenced, Progress: c.progress()}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var rep wire.Reply
	if err := bus.Request(ctx, w.nc, subjects.IngestVerb(c.ingest, subjects.IngestVerbPlace), req, &rep); err != nil {
		c.log.Warn().Err(err).Msg("hand-back after fencing failed")
	}
}

// drain stops offers, migrates every call away and waits for them to go, up to the drain timeout.
// Heartbeats go on throughout, so no router mistakes the draining worker for a dead one (which would
// re-place its calls from their last reported progress and replay frames twice).
func (w *Worker) drain() {
	w.mu.Lock()
	w.draining = true
	w.mu.Unlock()
	w.health.SetReady(false)
	stopHB := make(chan struct{})
	hbDone := make(chan struct{})
	go func() {
		defer close(hbDone)
		t := time.NewTicker(w.cfg.HeartbeatInterval)
		defer t.Stop()
		for {
			w.beat(w.mono())
			w.heartbeat()
			select {
			case <-stopHB:
				return
			case <-t.C:
			}
		}
	}()
	calls := w.snapshot()
	w.log.Info().Int("calls", len(calls)).Msg("draining")
	start := time.Now()
	// One deadline for the whole drain: migration requests and the wait for calls to go.
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.DrainTimeout)
	defer cancel()
	sem := make(chan struct{}, 32)
	w.group.Go(func() {
		for _, c := range calls {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			w.group.Go(func() {
				defer func() { <-sem }()
				w.migrateUntil(ctx, c, wire.ReasonDrain)
			})
		}
	})
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
wait:
	for len(w.snapshot()) > 0 {
		select {
		case <-ctx.Done():
			break wait
		case <-t.C:
		}
	}
	left := w.snapshot()
	for _, c := range left {
		c.stop(proc.StopShutdown)
	}
	cancel()
	w.group.Close()
	close(stopHB)
	<-hbDone
	w.heartbeat()
	w.log.Info().Dur("took", time.Since(start)).Int("not_migrated", len(left)).Msg("drained")
}

// Close stops every call without migration; safe to call more than once and after Run.
func (w *Worker) Close() {
	if !w.closed.CompareAndSwap(false, true) {
		return
	}
	w.mu.Lock()
	w.draining = true
	w.mu.Unlock()
	for _, c := range w.snapshot() {
		c.stop(proc.StopShutdown)
	}
	w.group.Close()
}

// Calls returns the number of calls held.
func (w *Worker) Calls() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.calls)
}

// fenced reports whether the heartbeat loop has stalled longer than FenceAfter (now is mono()):
// the routers will have declared this worker down and its calls are being re-placed.
func (w *Worker) fenced(now int64) bool {
	return now-w.lastTick.Load() > int64(w.cfg.FenceAfter)
}
