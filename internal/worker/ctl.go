package worker

import (
	"fmt"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

// ctlQueue is how many control requests, for all the worker's calls together, may wait for the
// worker's control goroutine; beyond that nats.go drops new ones (a slow consumer on the call's
// control subscription) and the requester times out. The goroutine only checks a request's
// bounds and moves it to its call's channel, so the queue fills only under a flood.
const ctlQueue = 1024

// Control requests. Each call keeps its own control subject (a request for a call this worker
// does not hold gets NATS "no responders"), but the subscription is a channel subscription onto
// one worker-wide channel, not a callback subscription: nats.go starts a goroutine (and its
// stack) for every callback subscription, which at thousands of calls is memory for requests
// that rarely come. One worker goroutine (serveCtl) applies the per-call bounds and hands each
// request to its call's goroutine, as the callback did.

// subscribeCtl subscribes c's control subject onto the worker's control channel.
func (c *call) subscribeCtl() error {
	w := c.w
	// Under ctlMu from before the subscription exists until it is in ctlCalls, so serveCtl never
	// misses the call of a request that came at once.
	w.ctlMu.Lock()
	defer w.ctlMu.Unlock()
	sub, err := w.nc.ChanSubscribe(subjects.Ctl(c.spec.Tenant, c.spec.Call), w.ctl)
	if err != nil {
		return err
	}
	// Without pending limits of its own (nats.go enforces none on a channel subscription), the
	// channel's capacity is the bound.
	c.ctlSub = sub
	w.ctlCalls[sub] = c
	return nil
}

// unsubscribeCtl ends c's control subscription; requests for it still on the worker's channel
// are dropped, as nats.go drops what a callback subscription had pending when it ends.
func (c *call) unsubscribeCtl() bool {
	w := c.w
	w.ctlMu.Lock()
	defer w.ctlMu.Unlock()
	s := c.ctlSub
	if s == nil {
		return false
	}
	delete(w.ctlCalls, s)
	if !s.IsValid() {
		return false
	}
	_ = s.Unsubscribe() // never closes w.ctl: nats.go closes only a SyncSubscription's channel
	return true
}

// serveCtl moves control requests from the worker's channel to their calls until stop is
// closed; requests still waiting then are dropped (every call has ended by then).
func (w *Worker) serveCtl(stop <-chan struct{}) {
	h := guard.Handler("worker_ctl", w.log, w.routeCtl)
	for {
		select {
		case m := <-w.ctl:
			h(m)
		case <-stop:
			return
		}
	}
}

// routeCtl applies a call's control bounds to one request (size, at most maxCtlPending waiting,
// room on the call's channel) and puts it on the call's channel or answers it at once.
func (w *Worker) routeCtl(m *nats.Msg) {
	w.ctlMu.Lock()
	c := w.ctlCalls[m.Sub]
	w.ctlMu.Unlock()
	if c == nil {
		return // the call has unsubscribed: dropped, as a callback subscription would
	}
	if len(m.Data) > maxCtlBytes {
		bus.Respond(m, wire.CtlReply{Reply: wire.Fail(wire.CodeBadRequest, fmt.Sprintf("request of %d bytes: at most %d", len(m.Data), maxCtlBytes)), Worker: w.cfg.ID})
		return
	}
	if c.ctlPending.Add(1) > maxCtlPending {
		c.ctlPending.Add(-1)
		bus.Respond(m, wire.CtlReply{Reply: wire.Fail(wire.CodeInternal, "control queue full"), Worker: w.cfg.ID})
		return
	}
	select {
	case c.audio <- m: // m.Sub tells it from audio
	default:
		c.ctlPending.Add(-1)
		bus.Respond(m, wire.CtlReply{Reply: wire.Fail(wire.CodeInternal, "control queue full"), Worker: w.cfg.ID})
	}
}
