package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/trace"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// call is one call held by a session-mode worker. Its audio subscription is a channel
// subscription: nats.go's reader puts each message straight on the call's channel, and the
// call's own goroutine (run) does everything else, so a frame wakes one goroutine on its way to
// the processors, as it would for a plain NATS subscriber. Control requests and the stop signal
// come on the same channel, so the goroutine waits on one channel, not a select.
//
// The fields a live frame touches come first, packed into six cache lines (with legs[0] and
// legs[1]): with thousands of calls a frame meets its call cold in the CPU caches, and every
// line it touches is a miss to memory (BenchmarkCallFrame; docs/loadtest.md, "The worker's
// CPU per frame"). Keep it so: a field the frame path reads goes up here, anything else below.
type call struct {
	w *Worker

	stopReq atomic.Pointer[string] // set by stop; the goroutine checks it before each message
	// A stop that first lets the goroutine take the messages queued when it was asked (see
	// release): its reason, and how many more messages it takes at most before stopping.
	stopQueued atomic.Pointer[string]
	ctlSub     *nats.Subscription

	// audio holds the frames not yet processed: at most PendingMsgs (beyond that nats.go drops
	// new ones, counted by the subscription as a slow consumer), and the call goroutine drops
	// the oldest while more than queue wait (worker backpressure). Both bounds are for two legs
	// and grow with a call that has more (legScale).
	audio     chan *nats.Msg
	queue     int
	now       int64        // w.mono() when the current message was taken off the channel
	lastFrame atomic.Int64 // w.mono() when the last frame was received

	// state is the call's epoch (low 32 bits: advanced in place when ingest re-places the call's
	// other pools) and whether it is stopping (stoppingBit), in one word so that an offer that
	// advances the epoch and a decision to stop are ordered: an offer never succeeds on a call
	// that is already on its way out (see advance, supersededBy).
	state atomic.Uint64
	join  uint32 // the epoch this worker joined at; older frames belong to the previous owner
	nlegs uint8  // len(spec.Legs)
	ended uint16 // legs whose last frame was processed
	// Delay baseline (call goroutine only): the lowest arrival−capture seen, which holds the
	// constant offset between ingest's clock and this worker's plus the fastest trip; a live
	// frame's excess over it is its lag. See excess.
	haveBase     bool
	base, baseAt int64        // baseline, and w.mono() when it last rose
	offBand      int          // consecutive live frames more than MaxFrameAge off the baseline
	skipLag      int          // live frames still to leave out of lag: they queued behind a replay
	lagNS        atomic.Int64 // EWMA of live frames' excess delay (see excess)
	migrating    atomic.Bool  // this worker asked ingest to move the call (drain, rebalance)
	moved        atomic.Bool  // and ingest did: the rest of this worker's epoch is its own to finish

	handlers []proc.Handler
	hbuf     [2]proc.Handler // handlers' storage for up to two processors: no line of its own to miss
	first    trace.Span      // offer → first frame processed; nil without tracing or once ended (call goroutine only)
	// out is the frame being processed: a live frame's header is parsed into it, and handlers
	// receive it; a field so the frame path does not allocate. Its payload aliases the NATS
	// message, and is cleared once the frame is processed.
	out  proc.Frame
	legs [session.MaxLegs]legState

	// What the frame path does not touch.
	spec       session.Spec
	ingest     string
	from       []int64 // per leg: where to resume (session.FromEpochStart or a sequence)
	log        zerolog.Logger
	audioSub   *nats.Subscription
	subDropped int // sub.Dropped() at the last check

	done       chan struct{}
	queuedLeft atomic.Int64
	ctlPending atomic.Int32 // control requests on the channel (maxCtlPending)
	superseded atomic.Bool
	handedBack atomic.Bool // dropped at the fence and handed back to ingest (worker.handBackOnce)
	finishing  bool        // finish has begun (call goroutine only)

	resumeCause string // cause of what the first replay after joining cannot fill

	shared   *proc.Shared // what the processors share (decoded audio, summary sections)
	replayed proc.Frame   // what handlers receive for a replayed frame (see out)
}

// legState is a leg's part of the frame path's state (call goroutine only, but next).
//
// Forward jumps: credit is how many missing frames the leg's next forward jump may explain as
// loss: it accrues at real time (a frame per frame duration), up to the call's queue bound, and
// each jump spends it. anchor is a frame beyond the credit held back as a possible new sequence
// start.
type legState struct {
	next             atomic.Int64 // the next sequence expected: progress, read by heartbeats
	credit, creditAt int64
	dropCause        string // cause of the last frame dropped before the next gap
	anchor           uint32
	started          bool
	paused           bool // the leg's last frame in order was paused (frame.FlagPaused)
	anchored         bool
}

func newCall(w *Worker, o *wire.Offer) *call {
	scale := legScale(len(o.Call.Legs))
	c := &call{
		w: w, spec: o.Call, join: o.Epoch, ingest: o.Ingest, nlegs: uint8(len(o.Call.Legs)),
		audio: make(chan *nats.Msg, w.cfg.PendingMsgs*scale),
		queue: w.cfg.QueueFrames * scale,
		done:  make(chan struct{}),
		from:  make([]int64, len(o.Call.Legs)),

		shared: proc.NewShared(len(o.Call.Legs)),

		resumeCause: proc.CauseReplacement,
	}
	if o.Reason == wire.ReasonIngestStall {
		// Re-placed because ingest stalled past the routers' grace: what its ring no longer
		// holds was lost to the stall, not to the hand-over.
		c.resumeCause = proc.CauseIngestStall
	}
	c.state.Store(uint64(o.Epoch))
	c.log = w.log.Hook(callFields{c})
	for i := range c.from {
		c.from[i] = session.FromEpochStart
	}
	for _, r := range o.Resume {
		if int(r.Leg) < len(c.from) {
			c.from[r.Leg] = r.Next
		}
	}
	for i := range c.legs {
		c.legs[i].next.Store(-1)
	}
	for i, f := range c.from {
		if f >= 0 {
			c.legs[i].next.Store(f)
		}
	}
	c.lastFrame.Store(w.mono())
	return c
}

// callFields adds the call's tenant, id and joining epoch to every event its logger writes. A
// hook rather than a With context: With copies the worker's context into a new 500-byte buffer
// for every call (held for the call's life, twice over with the collector's headroom), while the
// hook costs a pointer and adds the fields only to the events actually written.
type callFields struct{ c *call }

func (h callFields) Run(e *zerolog.Event, _ zerolog.Level, _ string) {
	e.Str("tenant", h.c.spec.Tenant).Str("call", h.c.spec.Call).Uint32("epoch", h.c.join)
}

// legScale is how many times the per-call bounds (-queue-frames, -pending-msgs), which are set
// for a two-leg call, a call with legs legs gets, so that they hold the same time of audio.
func legScale(legs int) int { return max(1, (legs+1)/2) }

// subscribe creates the per-call subscriptions.
func (c *call) subscribe() error {
	var err error
	c.audioSub, err = c.w.nc.ChanSubscribe(subjects.AudioCall(c.spec.Tenant, c.spec.Call), c.audio)
	if err != nil {
		return err
	}
	c.w.m.subs.Inc()
	if err := c.subscribeCtl(); err != nil {
		return err
	}
	c.w.m.subs.Inc()
	return nil
}

func (c *call) unsubscribe() {
	if s := c.audioSub; s != nil && s.IsValid() {
		_ = s.Unsubscribe()
		c.w.m.subs.Dec()
	}
	if c.unsubscribeCtl() {
		c.w.m.subs.Dec()
	}
}

// onAudio takes one message off the call's channel: a bad frame is counted and dropped, and
// while more than c.queue frames wait behind it the frame is dropped as the oldest.
func (c *call) onAudio(m *nats.Msg) string { return c.take(m, c.w.mono()) }

// take is onAudio with the time the message was taken off the channel (w.mono()).
func (c *call) take(m *nats.Msg, now int64) string {
	c.now = now
	c.lastFrame.Store(now)
	h := &c.out.Header
	p, err := h.Unmarshal(m.Data)
	if err != nil || h.Leg >= c.nlegs {
		c.w.m.bad.Inc()
		return ""
	}
	if len(c.audio) >= c.queue {
		c.legs[h.Leg].dropCause = proc.CauseBackpressure
		c.w.m.dropBackpressure.Inc()
		return ""
	}
	r := c.process(h, p)
	c.out.Payload = nil // it aliases the message: let the collector have it
	return r
}

const stoppingBit = 1 << 32

// curEpoch returns the epoch the call is held at.
func (c *call) curEpoch() uint32 { return uint32(c.state.Load()) }

// markStopping records that the call is stopping; offers no longer advance it.
func (c *call) markStopping() { c.state.Or(stoppingBit) }

// advance moves the call to epoch e (if higher) for an offer that keeps this worker, and
// reports false if the call is stopping: the offer must not be answered OK for it.
func (c *call) advance(e uint32) bool {
	for {
		s := c.state.Load()
		if s&stoppingBit != 0 {
			return false
		}
		if e <= uint32(s) || c.state.CompareAndSwap(s, uint64(e)) {
			return true
		}
	}
}

// supersededBy reports whether a frame or replay at epoch e ends the call, marking it stopping
// if so; false means an offer advanced the call to e meanwhile.
func (c *call) supersededBy(e uint32) bool {
	for {
		s := c.state.Load()
		if s&stoppingBit != 0 {
			return true
		}
		if e <= uint32(s) {
			return false
		}
		if c.state.CompareAndSwap(s, s|stoppingBit) {
			return true
		}
	}
}

// stopSignal is put on a call's channel to wake its goroutine for a stop.
var stopSignal = &nats.Msg{}

// stop asks the call goroutine to finish with reason; it does not wait. The first reason wins.
// When the channel is full the goroutine is busy and sees the request before its next message.
func (c *call) stop(reason string) {
	c.markStopping()
	if c.stopReq.CompareAndSwap(nil, &reason) {
		select {
		case c.audio <- stopSignal:
		default:
		}
	}
}

// release stops the call for a release at epoch (0: any) with reason, and reports false, doing
// nothing, if an offer has advanced the call past epoch: the check and the decision to stop are
// one step, as in advance, so an offer answered OK is never followed by a stop for an older
// epoch's release (the router's orphan release of an abandoned offer, racing with the next
// offer that keeps this worker).
//
// A call this worker asked to move (drain, rebalance) that is released at its own epoch has been
// moved, make-before-break: the new owner starts at the new epoch's first frame, and the rest of
// this worker's epoch is already on the call's channel, ahead of that first frame (the router
// releases such a call a grace after ingest switched, which a worker with a backlog may not have
// reached yet). So the call first processes what is queued, stopping at the new epoch's first
// frame (migrated) or once it has taken what was queued; any other release stops it at once.
func (c *call) release(epoch uint32, reason string) bool {
	for {
		s := c.state.Load()
		if epoch != 0 && s&stoppingBit == 0 && epoch < uint32(s) {
			return false
		}
		if c.state.CompareAndSwap(s, s|stoppingBit) {
			break
		}
	}
	n := int64(len(c.audio))
	if reason != proc.StopReleased || !c.migrating.Load() || n == 0 {
		c.stop(reason)
		return true
	}
	c.queuedLeft.Store(n)
	if c.stopQueued.CompareAndSwap(nil, &reason) {
		select {
		case c.audio <- stopSignal: // wakes a goroutine that took the queue meanwhile
		default:
		}
	}
	return true
}

// run is the call's goroutine.
func (c *call) run() {
	defer close(c.done)
	// A panic anywhere on the call's goroutine (a processor's Start, Frame, Gap, Control, or the
	// worker's own frame path) ends this call only; the loop has no per-frame defer.
	defer guard.Recover("worker_call", c.log, c.failed)
	c.startHandlers()
	reason := ""
	for reason == "" {
		reason = c.step(<-c.audio)
	}
	c.markStopping()
	c.finish(reason)
}

// step handles one message taken off the call's channel; it returns a stop reason when the call
// must end.
func (c *call) step(m *nats.Msg) (reason string) {
	switch r := c.stopReq.Load(); {
	case r != nil:
		return *r
	case m == stopSignal:
	case m.Sub == c.ctlSub:
		c.ctlPending.Add(-1)
		c.control(m)
	default:
		reason = c.onAudio(m)
	}
	if r := c.stopQueued.Load(); r != nil && reason == "" && (c.queuedLeft.Add(-1) <= 0 || len(c.audio) == 0) {
		reason = *r
	}
	return reason
}

func (c *call) startHandlers() {
	c.handlers = c.hbuf[:0]
	for _, p := range c.w.procs {
		h, err := p.Start(c)
		if err != nil {
			c.log.Error().Err(err).Msg("processor did not start")
			continue
		}
		c.handlers = append(c.handlers, h)
	}
}

// process handles one live frame, its header h (c.out's) and payload; it returns a stop reason
// when the call must end.
func (c *call) process(h *frame.Header, payload []byte) string {
	switch {
	case h.Epoch < c.join:
		c.w.m.oldEpoch.Inc()
		return ""
	case h.Epoch > c.curEpoch() && c.supersededBy(h.Epoch):
		if c.migrating.Load() {
			return proc.StopMigrated // the hand-over this worker asked for: it ends here, at L
		}
		return proc.StopSuperseded
	}
	now := c.now
	if c.w.fenced(now) && !c.moved.Load() {
		// A moved call is not being re-placed from this worker's progress: its new owner starts
		// at the new epoch's first frame, and only this worker processes the rest of its epoch.
		c.w.handBackOnce(c)
		return proc.StopSuperseded
	}
	leg := h.Leg
	if !c.legs[leg].started {
		c.legs[leg].started = true
		c.legs[leg].credit, c.legs[leg].creditAt = int64(c.queue), now
		from := c.from[leg]
		if (from == session.FromEpochStart && !h.Has(frame.FlagEpochStart)) || from == session.FromRingStart || (from >= 0 && int64(h.Seq) > from) {
			if c.replay(leg, from, h.Seq, c.resumeCause) {
				return proc.StopSuperseded
			}
		}
	} else if !h.Has(frame.FlagReplayed) {
		if k := (now - c.legs[leg].creditAt) / int64(frame.Duration); k > 0 {
			// Credit saved from before is capped; the time just elapsed always counts.
			c.legs[leg].credit = min(c.legs[leg].credit, int64(c.queue)) + k
			c.legs[leg].creditAt += k * int64(frame.Duration)
		}
		next := c.legs[leg].next.Load()
		switch jump := int64(h.Seq) - next; {
		case next < 0 || jump <= 0:
		case jump > c.legs[leg].credit:
			// More frames missing than real time since this leg's last frame (plus the queue's
			// worth) can explain: not a loss but a sequence that jumped (a broken or hostile
			// sender). A single such frame is dropped; a second one shortly after it (within
			// the queue bound) confirms the new sequence, and the stream is re-anchored there:
			// the hole is one gap with cause resync (processors must not fill it), no replay is
			// asked for.
			if !c.legs[leg].anchored || h.Seq <= c.legs[leg].anchor || int64(h.Seq-c.legs[leg].anchor) > int64(c.queue) {
				c.legs[leg].anchor, c.legs[leg].anchored = h.Seq, true
				c.w.m.jumpHeld.Inc()
				return ""
			}
			c.legs[leg].anchored = false
			c.legs[leg].dropCause = proc.CauseResync
			c.w.m.resyncs.Inc()
		default:
			c.legs[leg].credit -= jump
			// Frames went missing between NATS and this worker (a reconnect, a slow-consumer
			// drop): fetch them from ingest's ring before going on. The worker's own drops are
			// not refetched.
			if own := c.legs[leg].dropCause != ""; !own {
				cause := c.gapCause(leg)
				if c.replay(leg, next, h.Seq, cause) {
					return proc.StopSuperseded
				}
			} else if d, err := c.audioSub.Dropped(); err == nil {
				c.subDropped = d // NATS drops inside this hole are not a later gap's cause
			}
		}
		if c.legs[leg].anchored {
			c.legs[leg].anchored = false // the jump was a stray frame; the stream went on
		}
	}
	live, last := !h.Has(frame.FlagReplayed), h.Has(frame.FlagLast)
	var excess int64
	if live {
		excess = c.excess(c.w.wall0 + now - h.Capture)
		// A paused frame carries no audio: it is never stale, only accounted.
		if excess > int64(c.w.cfg.MaxFrameAge) && !last && !h.Has(frame.FlagPaused) {
			c.legs[leg].dropCause = proc.CauseStale
			c.w.m.dropStale.Inc()
			return ""
		}
	}
	c.deliver(h, payload) // h is c.out's header, which handlers see: read nothing of it after this
	// Frames that queued behind the last replay (a hand-over, a refetch) waited for that
	// replay, not for processing: they say nothing about this worker's backlog, and counting
	// them would make every worker that takes over calls look lagging for a moment.
	if live {
		if c.skipLag > 0 {
			c.skipLag--
		} else {
			old := c.lagNS.Load()
			c.lagNS.Store(old + (max(excess, 0)-old)/8)
			c.w.m.delay.Observe(float64(max(excess, 0)) / 1e9)
		}
	}
	if last {
		c.ended |= 1 << leg
		if int(c.ended) == 1<<c.nlegs-1 {
			return proc.StopEnd
		}
	}
	return ""
}

// baseRise is the rate at which a call's delay baseline may creep up: 1 ns per baseRise ns
// (100 ppm), so that clock rates that differ by up to that much do not read as a growing lag,
// while a real backlog, which grows by a frame per frame time, still does.
const baseRise = 10_000

// excess takes a live frame's delay d (arrival on this worker's clock minus capture on
// ingest's) and returns how much it exceeds the call's baseline, the lowest delay seen. A
// constant offset between the two clocks is in every d and in the baseline, so it cancels: a
// worker whose clock is seconds off processes the same as one in sync. A single frame far off
// the baseline (a hostile capture time) does not move it; MaxFrameAge-off frames that keep
// coming for more than the call's channel holds (ingest's clock was stepped, not a backlog,
// which stale drops would have cleared by then) re-anchor it.
func (c *call) excess(d int64) int64 {
	if !c.haveBase {
		c.base, c.baseAt, c.haveBase = d, c.now, true
		return 0
	}
	if rise := (c.now - c.baseAt) / baseRise; rise > 0 {
		c.base += rise
		c.baseAt = c.now
	}
	e := d - c.base
	if band := int64(c.w.cfg.MaxFrameAge); e > band || e < -band {
		if c.offBand++; c.offBand <= cap(c.audio) {
			return e
		}
		c.log.Warn().Dur("step", time.Duration(e)).Msg("capture clock stepped: delay baseline re-anchored")
		c.base, e = d, 0
	}
	c.offBand = 0
	if e < 0 {
		c.base, e = d, 0
	}
	return e
}

// deliver checks order and passes an in-order frame to the handlers.
func (c *call) deliver(h *frame.Header, payload []byte) {
	leg := h.Leg
	seq := int64(h.Seq)
	next := c.legs[leg].next.Load()
	if next >= 0 && seq < next {
		c.w.m.duplicate.Inc()
		for _, hd := range c.handlers {
			if d, ok := hd.(proc.DupHandler); ok {
				d.Duplicate(h)
			}
		}
		return
	}
	paused := h.Has(frame.FlagPaused)
	if next >= 0 && seq > next {
		g := proc.Gap{Leg: leg, From: uint32(next), To: uint32(seq - 1), Cause: c.gapCause(leg)}
		if paused && c.legs[leg].paused {
			// Between two paused frames: whatever went missing had no audio to lose.
			g.Cause = proc.CausePaused
			c.w.m.paused.Add(float64(g.Count()))
		} else {
			c.w.m.lost.WithLabelValues(g.Cause).Add(float64(g.Count()))
		}
		c.log.Warn().Uint8("leg", leg).Uint32("from", g.From).Uint32("to", g.To).Str("cause", g.Cause).Msg("gap")
		for _, hd := range c.handlers {
			if gh, ok := hd.(proc.GapHandler); ok {
				gh.Gap(g)
			}
		}
	}
	c.legs[leg].dropCause = ""
	c.legs[leg].next.Store(seq + 1)
	if h.Has(frame.FlagReplayed) {
		c.w.m.replayed.Inc()
	}
	c.legs[leg].paused = paused
	if paused {
		// A secure pause: ingest withheld the audio. Processors hear of the frame (accounting
		// counts it as paused), never of a payload, even one a forged frame might carry.
		c.w.m.paused.Inc()
		for _, hd := range c.handlers {
			if ph, ok := hd.(proc.PauseHandler); ok {
				ph.Paused(h)
			}
		}
		return
	}
	c.w.m.processed.Inc()
	if h.Has(frame.FlagLast) && len(payload) == 0 {
		return
	}
	f := &c.out
	if h != &f.Header { // a replayed frame: c.out holds the live frame that set off the replay
		f = &c.replayed
		f.Header = *h
	}
	f.Payload, f.Received = payload, c.w.wall0+c.now
	for _, hd := range c.handlers {
		hd.Frame(f)
	}
	if c.first != nil {
		c.first.End()
		c.first = nil
	}
}

func (c *call) gapCause(leg uint8) string {
	if cause := c.legs[leg].dropCause; cause != "" {
		return cause
	}
	if d, err := c.audioSub.Dropped(); err == nil && d > c.subDropped {
		c.subDropped = d
		return proc.CauseSlowConsumer
	}
	return proc.CauseBus
}

// maxReplayAdvances bounds how many times a replay refused as stale is asked again because an
// offer advanced the call in place meanwhile (see replay).
const maxReplayAdvances = 3

// replay asks the owning ingest for the frames of leg from `from` (or the epoch start) up to
// `to` (exclusive) and delivers them, flagged as replayed, before the live frame at `to`.
// Whatever the ring cannot fill is reported with cause. It returns true when ingest refuses the
// request as stale or a replayed frame carries a newer epoch than this worker's: the call has
// been superseded.
func (c *call) replay(leg uint8, from int64, to uint32, cause string) (superseded bool) {
	defer func() { c.skipLag, c.replayed.Payload = len(c.audio), nil }()
	req := wire.ReplayRequest{V: wire.V, Tenant: c.spec.Tenant, Call: c.spec.Call, Worker: c.w.cfg.ID,
		Legs: []wire.LegRange{{Leg: leg, From: from, To: int64(to)}}}
	ctx, cancel := context.WithTimeout(context.Background(), c.w.cfg.ReplayTimeout)
	defer cancel()
	var (
		buf    []byte
		r      *wire.Reply
		err    error
		oldest uint32 // frames of an older epoch are not this worker's
	)
	for attempt := 1; ; attempt++ {
		req.Epoch = c.curEpoch()
		if f := replayAsking.Load(); f != nil {
			(*f)(c.spec.ID, req.Epoch)
		}
		buf, r, err = c.requestReplay(ctx, req)
		if r == nil || r.Code != wire.CodeStale {
			break
		}
		// Ingest holds the call at a newer epoch than the request's. Either another worker has
		// it (this call is superseded), or an offer advanced this call in place while the
		// request was on its way: the worker answers such an offer before ingest switches to
		// its epoch, so by the time the refusal is here the call holds that epoch. Then ingest
		// publishes to this call and no other in its pool, so it must go on: ask again at the
		// epoch it holds now.
		if c.supersededBy(req.Epoch + 1) {
			c.w.m.replays.WithLabelValues("refused").Inc()
			c.log.Warn().Str("code", r.Code).Str("reason", r.Reason).Msg("replay refused: superseded")
			c.markLoss(leg, cause)
			return true
		}
		if attempt == maxReplayAdvances {
			break
		}
		if from == session.FromEpochStart {
			// Ingest's epoch start is now the newer epoch's: ask from the ring's start and keep
			// the frames from the epoch this worker joined at (older ones were the previous
			// owner's).
			req.Legs[0].From, oldest = session.FromRingStart, c.join
		}
	}
	if r != nil {
		c.w.m.replays.WithLabelValues("refused").Inc()
		c.log.Warn().Str("code", r.Code).Str("reason", r.Reason).Msg("replay refused")
		c.markLoss(leg, cause)
		return false
	}
	if err != nil {
		c.w.m.replays.WithLabelValues("error").Inc()
		c.log.Warn().Err(err).Uint8("leg", leg).Msg("replay failed")
		c.markLoss(leg, cause)
		return false
	}
	c.w.m.replays.WithLabelValues("ok").Inc()
	c.markLoss(leg, cause) // a hole before the ring's first frame has the same cause
	n := 0
	for len(buf) > 0 {
		var h frame.Header
		p, err := h.Unmarshal(buf)
		if err != nil {
			break
		}
		buf = buf[frame.HeaderLen+len(p):]
		if h.Leg != leg || h.Seq >= to || h.Epoch < oldest {
			continue
		}
		if h.Epoch > c.curEpoch() && c.supersededBy(h.Epoch) {
			return true
		}
		h.Flags |= frame.FlagReplayed
		c.deliver(&h, p)
		n++
	}
	c.markLoss(leg, cause)
	c.log.Debug().Uint8("leg", leg).Int("frames", n).Msg("replayed")
	return false
}

// replayRetry is how often a replay request that no ingest connection answered ("no responders")
// is asked again, for at most replayAway: long enough for an ingest connection to reconnect to
// another NATS node, short enough that the live frames queued behind the replay stay well inside
// the default 2 s -max-frame-age.
const (
	replayRetry = 50 * time.Millisecond
	replayAway  = 500 * time.Millisecond
)

// requestReplay asks the call's ingest for req. While no server holds the ingest's replay
// subscription (its connection is reconnecting, as when the NATS node it was on died: frames
// lost on the way to this worker in the same failure are in its ring) the request is asked
// again every replayRetry for up to replayAway (and within ctx), rather than the frames given up
// as lost at once.
func (c *call) requestReplay(ctx context.Context, req wire.ReplayRequest) ([]byte, *wire.Reply, error) {
	subject := subjects.IngestVerb(c.ingest, subjects.IngestVerbReplay)
	giveUp := time.Now().Add(replayAway)
	for {
		buf, r, err := wire.RequestReplay(ctx, c.w.nc, subject, req)
		if !errors.Is(err, nats.ErrNoResponders) || time.Now().Add(replayRetry).After(giveUp) {
			return buf, r, err
		}
		t := time.NewTimer(replayRetry)
		select {
		case <-ctx.Done():
			t.Stop()
			return buf, r, err
		case <-t.C:
		}
	}
}

// markLoss attributes any gap left before the next live frame to cause.
func (c *call) markLoss(leg uint8, cause string) {
	if c.legs[leg].dropCause == "" {
		c.legs[leg].dropCause = cause
	}
}

func (c *call) progress() []session.LegSeq {
	out := make([]session.LegSeq, len(c.spec.Legs))
	for i := range out {
		out[i] = session.LegSeq{Leg: uint8(i), Next: c.legs[i].next.Load()}
	}
	return out
}

// control answers a ctl.<tenant>.<call> request on the call goroutine.
func (c *call) control(m *nats.Msg) {
	rep := wire.CtlReply{Worker: c.w.cfg.ID, Pool: c.w.cfg.Pool, Epoch: c.curEpoch()}
	var req wire.CtlRequest
	if err := json.Unmarshal(m.Data, &req); err != nil || req.Command == "" {
		rep.Reply = wire.Fail(wire.CodeBadRequest, "want {\"v\":1,\"command\":...}")
		bus.Respond(m, rep)
		return
	}
	if err := checkCtl(&req); err != nil {
		rep.Reply = wire.Fail(wire.CodeBadRequest, err.Error())
		bus.Respond(m, rep)
		return
	}
	if req.Command == "status" {
		rep.Reply = wire.OK()
		rep.Data, _ = json.Marshal(map[string]any{"progress": c.progress(), "lag_ms": float64(c.lagNS.Load()) / 1e6})
		bus.Respond(m, rep)
		return
	}
	for _, hd := range c.handlers {
		ctl, ok := hd.(proc.Controller)
		if !ok {
			continue
		}
		res, handled, err := ctl.Control(req.Command, req.Args)
		if !handled {
			continue
		}
		if err != nil {
			rep.Reply = wire.Fail(wire.CodeBadRequest, err.Error())
		} else {
			rep.Reply = wire.OK()
			rep.Data, _ = json.Marshal(res)
		}
		bus.Respond(m, rep)
		return
	}
	rep.Reply = wire.Fail(wire.CodeBadRequest, "unknown command "+req.Command)
	bus.Respond(m, rep)
}

// stopError is the stop reason of a call whose goroutine panicked.
const stopError = "error"

// failed ends the call after a panic on its goroutine: an error event, then the usual stop
// (processors' Stop, accounting, stopped event, slot freed). A panic in the stop itself frees
// the slot and nothing more.
func (c *call) failed(v any) {
	c.markStopping()
	if c.finishing {
		c.unsubscribe()
		c.w.removeCall(c)
		return
	}
	c.w.m.panics.Inc()
	msg := fmt.Sprint(v)
	if len(msg) > 200 {
		msg = msg[:200]
	}
	c.Emit("error", map[string]any{"reason": "panic", "panic": msg, "progress": c.progress()})
	c.finish(stopError)
}

func (c *call) finish(reason string) {
	c.finishing = true
	if c.first != nil { // stopped before any frame was processed
		trace.Fail(c.first, "stopped before the first frame: "+reason)
		c.first.End()
		c.first = nil
	}
	c.unsubscribe()
	if reason == proc.StopIdle {
		c.w.m.reapedSubs.Add(2)
	}
	if reason == proc.StopSuperseded {
		c.superseded.Store(true)
	}
	for _, h := range c.handlers {
		c.stopHandler(h, reason)
	}
	c.Emit("stopped", map[string]any{"reason": reason, "progress": c.progress()})
	c.log.Info().Str("reason", reason).Msg("call stopped")
	c.w.m.ended.WithLabelValues(reason).Inc()
	c.w.removeCall(c)
}

// stopHandler calls h.Stop; a panic in it is counted and does not keep the other processors
// from stopping.
func (c *call) stopHandler(h proc.Handler, reason string) {
	defer guard.Recover("worker_processor_stop", c.log, nil)
	h.Stop(reason)
}

// proc.Call implementation.

func (c *call) Spec() *session.Spec  { return &c.spec }
func (c *call) Epoch() uint32        { return c.curEpoch() }
func (c *call) Worker() string       { return c.w.cfg.ID }
func (c *call) Pool() string         { return c.w.cfg.Pool }
func (c *call) Log() *zerolog.Logger { return &c.log }
func (c *call) Shared() *proc.Shared { return c.shared }

// Emit publishes an event unless the call has been superseded.
func (c *call) Emit(kind string, data any) {
	if c.superseded.Load() {
		return
	}
	c.Report(kind, data)
}

// Report publishes an event, superseded or not (proc.Reporter).
func (c *call) Report(kind string, data any) {
	ev := wire.Event{Kind: kind, Tenant: c.spec.Tenant, Call: c.spec.Call, Epoch: c.curEpoch(), Time: c.w.cfg.Now(), Source: "worker/" + c.w.cfg.ID}
	if err := bus.PublishEvent(c.w.nc, ev, data); err != nil {
		c.log.Warn().Err(err).Str("kind", kind).Msg("event not published")
	}
}
