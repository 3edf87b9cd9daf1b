// Package ingest is the ingest core: it owns the calls whose media this node terminates, asks the
// routers to place each one before publishing, publishes 20 ms frames on per-leg subjects, keeps a
// bounded replay ring per leg, heartbeats the calls it owns, re-places them (at a new epoch) when a
// worker dies or asks to hand a call off, and ends calls whose media stopped. Transports (file
// player, SIP, WHIP) bring calls in through StartCall and Call.Send.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/obs"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/trace"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Errors returned to transports.
var (
	// ErrDraining means the node is shutting down and takes no new calls.
	ErrDraining = errors.New("ingest: draining")
	// ErrNoRouter means no router answered a placement request.
	ErrNoRouter = errors.New("ingest: no router answered")
	// ErrEnded means the call has already ended.
	ErrEnded = errors.New("ingest: call ended")
	// ErrLeg means the leg index is out of range.
	ErrLeg = errors.New("ingest: no such leg")
	// ErrDuplicate means a call with the same id is already owned here.
	ErrDuplicate = errors.New("ingest: duplicate call id")
)

// RefusedError is a placement refusal; transports turn it into SIP 503 or HTTP 503 with
// Retry-After.
type RefusedError struct {
	Code       string
	Reason     string
	RetryAfter time.Duration
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("ingest: placement refused: %s: %s", e.Code, e.Reason)
}

// RetryAfter returns how long a refused caller should wait, and whether err is a refusal (or
// another temporary condition: draining, no router).
func RetryAfter(err error) (time.Duration, bool) {
	var re *RefusedError
	switch {
	case errors.As(err, &re):
		return re.RetryAfter, true
	case errors.Is(err, ErrDraining), errors.Is(err, ErrNoRouter):
		return 5 * time.Second, true
	}
	return 0, false
}

// handlerHook, when set (by tests, before Run), runs first in every NATS handler with the
// handler's name: a test makes it panic to prove the node keeps serving.
var handlerHook func(where string)

// Source is a transport that brings calls into ingest: the file player, the SIP user agent, the
// WHIP endpoint. Run serves until ctx ends, starting calls with Node.StartCall.
type Source interface {
	Run(ctx context.Context, n *Node) error
}

// Node is one ingest node.
type Node struct {
	cfg  Config
	nc   *nats.Conn
	own  *pubConn                        // nc as a publishing connection: pubs[0]
	dial func(i int) (*nats.Conn, error) // Deps.Dial
	pubs []*pubConn                      // the connections frames go on: own first, then those Run opens; under mu
	fill int                             // calls that fill a publishing connection before the next is used: CallsPerPublishConn (tests lower it)
	// maxConns bounds the automatic setting's connections, the node's own among them:
	// MaxPublishConns (tests lower it).
	maxConns int
	log      zerolog.Logger
	m        *metrics
	health   *obs.Health
	ready    chan struct{} // closed by Run once ready (Node.Ready)

	mu       sync.Mutex
	calls    map[session.ID]*Call
	draining bool
	// growing: a publishing connection is being dialled (Node.grow), or Run has not opened its
	// first ones yet, so no other dial starts.
	growing   bool
	growAfter time.Time   // no dial before this: the last one failed
	g         guard.Group // goroutines started from NATS callbacks (re-placements) and dials (Node.grow)
	closed    atomic.Bool
	paused    atomic.Bool                         // fault injection (Pause): publish nothing, answer nothing
	pauseBy   string                              // who lifts a pause past MaxPause: "ingest/<id>"
	hbMu      sync.Mutex                          // one heartbeat at a time: states is a sequence
	states    *wire.StateTracker[wire.IngestCall] // the call list's snapshots and deltas, under hbMu
}

// Deps are the node's collaborators.
type Deps struct {
	NC       *nats.Conn
	Log      zerolog.Logger
	Registry prometheus.Registerer
	Health   *obs.Health
	// Dial opens the node's i-th extra connection for frames (i from 1), with the node's
	// identity; needed when Config.PublishConns > 1.
	Dial func(i int) (*nats.Conn, error)
}

// New validates cfg and builds a node. It does no I/O: Run opens the extra publishing
// connections (Config.PublishConns), which Run's end or Close closes.
func New(cfg Config, d Deps) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.PublishConns > 1 && d.Dial == nil {
		return nil, fmt.Errorf("ingest: -nats-publish-conns %d: the node has no way to open more connections", cfg.PublishConns)
	}
	if d.Registry == nil {
		d.Registry = prometheus.NewRegistry()
	}
	if d.Health == nil {
		d.Health = &obs.Health{}
	}
	own := &pubConn{nc: d.NC}
	n := &Node{cfg: cfg, nc: d.NC, own: own, dial: d.Dial, pubs: []*pubConn{own}, fill: CallsPerPublishConn, maxConns: MaxPublishConns, growing: true, log: d.Log.With().Str("ingest", cfg.ID).Logger(), m: newMetrics(d.Registry),
		health: d.Health, ready: make(chan struct{}), calls: map[session.ID]*Call{}, states: wire.NewIngestStates(cfg.ID), pauseBy: "ingest/" + cfg.ID}
	d.Registry.MustRegister(pubMetrics{n})
	if d.Dial != nil && cfg.PublishConns != 1 {
		d.Health.AddReadyCheck("nats_publish", n.extraConnected)
	}
	return n, nil
}

// ID returns the node id.
func (n *Node) ID() string { return n.cfg.ID }

// NC returns the node's NATS connection (transports subscribe on it; a call's events go out
// with Call.PublishEvent).
func (n *Node) NC() *nats.Conn { return n.nc }

// Ready returns a channel closed once Run has subscribed to the node's requests, opened the
// extra publishing connections it starts with (Config.PublishConns) and turned the node's
// health ready: from then on a call that starts has its frames on one of those, not on the
// node's own connection, which it would keep for life. It is never closed if Run returns
// before (a subscription, dial or flush failed) or is never called, so callers wait on it
// together with Run's end. Whatever starts calls on the node (transports, players, tests)
// starts once it is closed.
func (n *Node) Ready() <-chan struct{} { return n.ready }

// Start runs Run on a goroutine of its own and returns once the node is ready, with a channel
// that yields Run's error when Run returns; when Run returns before the node is ready, Start
// returns its error instead. This is how whatever starts calls on the node runs it.
func (n *Node) Start(ctx context.Context) (<-chan error, error) {
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	select {
	case <-n.ready:
		return done, nil
	case err := <-done:
		if err == nil {
			err = errors.New("ingest: the node stopped before it was ready")
		}
		return nil, err
	}
}

// Run serves replay and hand-off requests, heartbeats and reaps until ctx ends, then drains:
// refuses new calls and waits (up to the drain timeout) for its calls to end before ending the
// rest. It turns the node ready (Ready) once it serves; call it once.
func (n *Node) Run(ctx context.Context) error {
	var subs []*nats.Subscription
	add := func(s *nats.Subscription, err error) error {
		if err == nil {
			subs = append(subs, s)
		}
		return err
	}
	handle := func(where string, h nats.MsgHandler) nats.MsgHandler {
		return guard.Handler(where, n.log, func(m *nats.Msg) {
			if n.paused.Load() {
				return
			}
			if handlerHook != nil {
				handlerHook(where)
			}
			h(m)
		})
	}
	if err := add(n.nc.Subscribe(subjects.IngestVerb(n.cfg.ID, subjects.IngestVerbReplay), handle("ingest_replay", n.onReplay))); err != nil {
		return err
	}
	if err := add(n.nc.Subscribe(subjects.IngestVerb(n.cfg.ID, subjects.IngestVerbPlace), handle("ingest_place", n.onPlace))); err != nil {
		return err
	}
	if err := add(n.nc.Subscribe(subjects.IngestVerb(n.cfg.ID, subjects.IngestVerbPause), handle("ingest_pause", n.onPause))); err != nil {
		return err
	}
	if err := add(n.nc.Subscribe(subjects.Bcast(subjects.TopicDown), handle("ingest_down", n.onDown))); err != nil {
		return err
	}
	defer func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
	}()
	if err := n.dialPublishConns(); err != nil {
		return err
	}
	if err := n.nc.Flush(); err != nil {
		return err
	}
	n.health.SetLive(true)
	n.health.SetReady(true)
	close(n.ready)
	t := time.NewTicker(n.cfg.HeartbeatInterval)
	defer t.Stop()
	n.heartbeat()
	back := n.absence()
	poll := time.NewTicker(absencePoll)
	defer poll.Stop()
	for {
		select {
		case <-poll.C:
			back()
		case <-t.C:
			n.reap()
			n.heartbeat()
			back()
		case <-ctx.Done():
			n.drain()
			n.g.Close()
			n.heartbeat()
			n.closeExtra() // every call has ended
			return nil
		}
	}
}

// absencePoll is how often the absence check runs besides after each heartbeat, so that a call
// is re-placed within this of its connection's return rather than up to a heartbeat later.
const absencePoll = 50 * time.Millisecond

// absence returns a check, run after each heartbeat and every absencePoll, that notices when this node comes back
// from an absence longer than StrandedAfter (no heartbeat went out while connected: a cut or
// refused connection, or the process stopped) and then re-places every call at once with reason
// ingest_stall. The routers would tell it the same after their next sweep; by then the tail of
// a call that ends soon after would be published to no worker. An extra publishing connection
// (-nats-publish-conns) that comes back from such an absence alone, the node's own connection
// up meanwhile, re-places only the calls whose frames go on it: the others lost nothing. Each
// connection's calls are judged as soon as it and the node's own are up: waiting for the last
// of eight to reconnect (each after its own jittered wait) kept a call that ended half a second
// after the cut healed from being re-placed at all. A call placed again since the check first
// saw its connection away (a router's reconcile) is left where it is.
func (n *Node) absence() func() {
	start := time.Now() // monotonic: a wall-clock step is not an absence
	for _, p := range n.conns() {
		p.seen = start
	}
	return func() {
		now := time.Now()
		if n.paused.Load() {
			return
		}
		if bus.Connected(n.nc) != nil {
			if n.own.lost.IsZero() {
				n.own.lost = now
			}
			return
		}
		away := now.Sub(n.own.seen)
		// The connections back from an absence, each with when a check first saw it away;
		// zero when none did (the process itself was stopped, or the node's own connection
		// was away too, and nothing was placed meanwhile).
		gone := map[*pubConn]time.Time{}
		var back []*pubConn
		for _, p := range n.conns() {
			if bus.Connected(p.nc) != nil {
				if p.lost.IsZero() {
					p.lost = now
				}
				continue // its calls are judged once it is back
			}
			if n.cfg.StrandedAfter > 0 && now.Sub(p.seen) > n.cfg.StrandedAfter {
				gone[p] = p.lost
				back = append(back, p)
			}
			p.seen, p.lost = now, time.Time{}
		}
		if len(back) == 0 {
			return
		}
		whole := back[0] == n.own // the node's own: its heartbeats did not go out either
		n.mu.Lock()
		held := make([]*Call, 0, len(n.calls))
		for _, c := range n.calls {
			held = append(held, c)
		}
		n.mu.Unlock()
		calls := held[:0]
		placedSince := 0
		for _, c := range held {
			since, ok := gone[c.pub]
			if !ok {
				continue
			}
			if since.IsZero() && whole {
				since = gone[n.own]
			}
			c.mu.Lock()
			fresh := !since.IsZero() && c.placed.After(since)
			c.mu.Unlock()
			if fresh {
				placedSince++
				continue
			}
			calls = append(calls, c)
		}
		n.m.absences.Inc()
		if whole {
			n.log.Warn().Dur("away", away).Int("connections", len(back)).Int("calls", len(calls)).Int("placed_since", placedSince).Msg("back after an absence: re-placing the calls of every connection back, not placed again since")
		} else {
			n.log.Warn().Int("connections", len(back)).Int("calls", len(calls)).Int("placed_since", placedSince).Msg("publishing connections back after an absence: re-placing their calls not placed again since")
		}
		for _, c := range calls {
			for _, p := range c.Placements() {
				// Resume nil: the routers resume from the progress the workers last reported.
				n.startReplace(c, p.Worker, wire.ReasonIngestStall, nil, true, nil)
			}
		}
	}
}

func (n *Node) drain() {
	n.mu.Lock()
	n.draining = true
	n.mu.Unlock()
	n.health.SetReady(false)
	deadline := time.Now().Add(n.cfg.DrainTimeout)
	for len(n.Calls()) > 0 && time.Now().Before(deadline) {
		n.heartbeat()
		time.Sleep(100 * time.Millisecond)
	}
	for _, c := range n.Calls() {
		c.End("ingest_shutdown")
	}
}

// Close ends every call; safe to call more than once.
func (n *Node) Close() {
	if !n.closed.CompareAndSwap(false, true) {
		return
	}
	for _, c := range n.Calls() {
		c.End("ingest_shutdown")
	}
	n.g.Close()
	n.closeExtra()
}

// Pause injects a fault for tests and drills: while paused the node publishes nothing (no frames,
// heartbeats or events) and answers no request, as a node cut off from NATS or stopped by the
// kernel would, but it keeps capturing: frames still go into the replay rings. Unpaused, it goes
// on as a node whose connection came back.
func (n *Node) Pause(on bool) { n.paused.Store(on) }

// Calls returns the calls this node owns.
func (n *Node) Calls() []*Call {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]*Call, 0, len(n.calls))
	for _, c := range n.calls {
		out = append(out, c)
	}
	return out
}

// Call returns one owned call.
func (n *Node) Call(id session.ID) *Call {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.calls[id]
}

func (n *Node) remove(c *Call) {
	n.mu.Lock()
	if n.calls[c.spec.ID] == c {
		delete(n.calls, c.spec.ID)
		c.pub.calls--
	}
	n.m.calls.Set(float64(len(n.calls)))
	n.mu.Unlock()
}

// StartCall validates spec, places the call on a worker of every pool, and returns it ready for
// Send. A refusal is a *RefusedError.
func (n *Node) StartCall(ctx context.Context, spec session.Spec) (*Call, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	c := n.newCall(spec)
	n.mu.Lock()
	if n.draining {
		n.mu.Unlock()
		n.m.starts.WithLabelValues("draining").Inc()
		return nil, ErrDraining
	}
	if n.calls[spec.ID] != nil {
		n.mu.Unlock()
		return nil, ErrDuplicate
	}
	n.calls[spec.ID] = c // owned from now on, so heartbeats can list it once placed
	n.assignConn(c)
	n.m.calls.Set(float64(len(n.calls)))
	n.mu.Unlock()

	resume := make([]session.LegSeq, len(spec.Legs))
	for i := range resume {
		resume[i] = session.LegSeq{Leg: uint8(i), Next: session.FromEpochStart}
	}
	// Unanswered requests (no router running, one that died mid-request) and no_workers refusals
	// (a router that may not have heard the workers yet) are retried with backoff and jitter, each
	// at a new epoch, for at most PlaceAttempts attempts within twice PlaceTimeout (one request
	// may take PlaceTimeout, enough for a router's every offer). Other refusals (no capacity, a
	// bad request) are the answer.
	deadline := time.Now().Add(2 * n.cfg.PlaceTimeout)
	var lastErr error
	var refused *RefusedError
	for attempt := 0; attempt < n.cfg.PlaceAttempts; attempt++ {
		epoch := c.nextEpoch()
		rctx, cancel := context.WithDeadline(ctx, deadline)
		rep, err := n.requestPlace(rctx, c, epoch, n.cfg.Pools, nil, nil, resume, "new")
		cancel()
		if err == nil && rep.OK {
			c.logEpoch.Store(epoch)
			if !c.setPlacement(epoch, rep.Placements) {
				n.releasePlacements(c, epoch, rep.Placements)
				n.forget(c)
				return nil, ErrEnded
			}
			n.m.starts.WithLabelValues("placed").Inc()
			c.log().Info().Any("placements", rep.Placements).Int("attempt", attempt).Msg("call placed")
			n.event(c, epoch, "start", map[string]any{"ingest": n.cfg.ID, "legs": spec.Legs, "meta": spec.Meta})
			return c, nil
		}
		if err == nil {
			refused = &RefusedError{Code: rep.Code, Reason: rep.Reason, RetryAfter: time.Duration(rep.RetryAfterMS) * time.Millisecond}
			lastErr = refused
			if rep.Code != wire.CodeNoWorkers {
				break // no capacity is an answer (503); no workers may be a router that just started
			}
		} else {
			refused, lastErr = nil, err
		}
		wait := backoff(attempt, placeBackoff, placeBackoffMax)
		if ctx.Err() != nil || time.Until(deadline) < wait {
			break
		}
		n.m.placeRetries.Inc()
		select {
		case <-time.After(wait):
		case <-ctx.Done():
		}
	}
	n.forget(c)
	if refused != nil {
		n.m.starts.WithLabelValues("refused").Inc()
		return nil, refused
	}
	n.m.starts.WithLabelValues("no_router").Inc()
	return nil, fmt.Errorf("%w: %v", ErrNoRouter, lastErr)
}

// newCall builds a call for a valid spec, with its legs' rings, not yet owned or placed.
func (n *Node) newCall(spec session.Spec) *Call {
	c := &Call{n: n, pub: n.own, spec: spec, done: make(chan struct{}), lastMedia: time.Now().UnixNano()}
	c.legs = c.inline[:0]
	if len(spec.Legs) > len(c.inline) {
		c.legs = make([]leg, 0, len(spec.Legs))
	}
	// The legs' subjects in one allocation, next to each other.
	var all strings.Builder
	ends := make([]int, len(spec.Legs))
	for i, l := range spec.Legs {
		all.WriteString(subjects.Audio(spec.Tenant, spec.Call, l.Name))
		ends[i] = all.Len()
	}
	subject := all.String()
	for i, l := range spec.Legs {
		k := ends[i]
		if i > 0 {
			k -= ends[i-1]
		}
		payload := nominalPayload(l)
		frames := max(4, min(int(n.cfg.Ring/frame.Duration), n.cfg.RingMaxBytes/(slotKept+payload)))
		c.legs = append(c.legs, leg{subject: subject[:k], samples: samplesPerFrame(l), rate: l.Rate, codec: l.Codec, index: l.Index,
			epochStart: true, ring: makeRing(c, frames, payload)})
		subject = subject[k:]
	}
	return c
}

// releasePlacements lets workers go of a call that ended while it was being placed.
func (n *Node) releasePlacements(c *Call, epoch uint32, ps []wire.Placement) {
	for _, p := range ps {
		rel := wire.Release{V: wire.V, Tenant: c.spec.Tenant, Call: c.spec.Call, Epoch: epoch, Reason: "ended while placing"}
		_ = bus.Publish(c.pub.nc, subjects.WorkerVerb(p.Worker, subjects.WorkerVerbRelease), rel) // after the call's frames
	}
}

func (n *Node) forget(c *Call) {
	c.mu.Lock()
	c.ended = true
	c.releaseRings()
	c.mu.Unlock()
	n.remove(c)
	c.endOnce.Do(func() { close(c.done) })
}

func (n *Node) requestPlace(ctx context.Context, c *Call, epoch uint32, pools []string, keep []wire.Placement, exclude []string, resume []session.LegSeq, reason string) (*wire.PlaceReply, error) {
	req := wire.PlaceRequest{V: wire.V, Call: c.spec, Ingest: n.cfg.ID, Epoch: epoch, Pools: pools, Keep: keep, Exclude: exclude,
		Resume: resume, Reason: reason}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.PlaceTimeout)
	defer cancel()
	ctx, span := trace.Start(ctx, "ingest.place", trace.Client, append(trace.Call(c.spec.Tenant, c.spec.Call), trace.Epoch(epoch), trace.String("callrouter.reason", reason))...)
	defer span.End()
	var rep wire.PlaceReply
	if n.paused.Load() {
		<-ctx.Done()
		trace.Fail(span, "paused")
		return nil, ctx.Err()
	}
	if err := bus.Request(ctx, n.nc, subjects.Place, req, &rep); err != nil {
		trace.Fail(span, err.Error())
		return nil, err
	}
	if !rep.OK {
		trace.Fail(span, rep.Code+": "+rep.Reason)
	}
	return &rep, nil
}

// reap ends calls whose media stopped without a hang-up and resumes pauses past MaxPause.
func (n *Node) reap() {
	now := time.Now().UnixNano()
	for _, c := range n.Calls() {
		c.expirePause(time.Unix(0, now))
		if c.idle(now - int64(n.cfg.MediaTimeout)) { // a call still being placed is StartCall's
			c.End("media_timeout")
		}
	}
}

// heartbeat publishes the call list (a snapshot or a delta) and then the liveness heartbeat.
func (n *Node) heartbeat() {
	n.hbMu.Lock()
	defer n.hbMu.Unlock()
	n.mu.Lock()
	hb := wire.IngestHeartbeat{V: wire.VHeartbeat, ID: n.cfg.ID, Draining: n.draining, IntervalMS: int(n.cfg.HeartbeatInterval / time.Millisecond)}
	calls := make([]*Call, 0, len(n.calls))
	for _, c := range n.calls {
		calls = append(calls, c)
	}
	n.mu.Unlock()
	list := make([]wire.IngestCall, 0, len(calls))
	for _, c := range calls {
		c.mu.Lock()
		c.countPublished()
		if c.epoch > 0 {
			list = append(list, wire.IngestCall{Tenant: c.spec.Tenant, Call: c.spec.Call, Epoch: c.epoch, Placements: c.placements, Paused: c.pause.on})
		}
		c.mu.Unlock()
	}
	if n.paused.Load() {
		return
	}
	hb.Active = len(list)
	if err := bus.Publish(n.nc, subjects.HeartbeatCalls(subjects.Ingest, n.cfg.ID), n.states.Next(list)); err != nil {
		n.log.Warn().Err(err).Msg("call list not published")
	}
	if err := bus.Publish(n.nc, subjects.Heartbeat(subjects.Ingest, n.cfg.ID), hb); err != nil {
		n.log.Warn().Err(err).Msg("heartbeat not published")
	}
}

func (n *Node) event(c *Call, epoch uint32, kind string, data any) {
	_ = c.PublishEvent(wire.Event{Kind: kind, Epoch: epoch, Source: "ingest/" + n.cfg.ID}, data)
}
