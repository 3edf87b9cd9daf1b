package ingest

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

// Backoff between placement attempts: new calls start fast (a router that just started answers
// within a heartbeat round), re-placements of running calls more patiently.
const (
	placeBackoff      = 50 * time.Millisecond
	placeBackoffMax   = time.Second
	replaceBackoff    = 250 * time.Millisecond
	replaceBackoffMax = 5 * time.Second
)

// backoff returns the wait before retry attempt+1: base doubled per attempt up to max, with full
// jitter over its upper half, so that nodes refused together do not come back together.
func backoff(attempt int, base, maxWait time.Duration) time.Duration {
	d := base << min(attempt, 16)
	if d <= 0 || d > maxWait {
		d = maxWait
	}
	return d/2 + rand.N(d/2+1)
}

// failover reports whether reason re-places a call that has (or may have) lost its worker
// already: such a re-placement keeps retrying; a migration away from a live worker can wait.
func failover(reason string) bool {
	switch reason {
	case wire.ReasonWorkerDown, wire.ReasonFenced, wire.ReasonIngestStall, wire.ReasonReconcile:
		return true
	}
	return false
}

// retakes reports whether a re-placement for reason may offer the call to the worker it leaves:
// one that is alive and merely lost the call (the ingest stalled, a message was lost) may take it
// again.
func retakes(reason string) bool {
	return reason == wire.ReasonIngestStall || reason == wire.ReasonReconcile
}

// replace moves the call's placement in pool away from worker (make-before-break): a new epoch is
// placed, keeping the call's other pools where they are, and only then does the call switch its
// frames to the new epoch. A failover retries with backoff for up to ReplaceTimeout (the routers'
// reconciliation asks again after that); a migration gives up after three attempts.
//
// A worker that is leaving (drain, rebalance) is never offered the call again. One that was
// declared down or fenced itself is avoided, not refused: after the first refusal it may take the
// call back, so a pool whose only worker was fenced (or was thought dead and is back) gets its calls
// again at the next attempt rather than none until the replace timeout. A router's notice that
// arrives meanwhile (it repeats them every sweep while the call is stranded) wakes the wait, so a
// worker that joins or comes back is offered the call within a sweep.
func (c *Call) replace(worker, reason string, resume []session.LegSeq) error {
	c.placing.Lock()
	defer c.placing.Unlock()
	n := c.n
	nudge := make(chan struct{}, 1)
	c.nudge.Store(&nudge)
	defer c.nudge.Store(nil)
	retake := retakes(reason)
	deadline := time.Now().Add(n.cfg.ReplaceTimeout)
	for attempt := 0; ; attempt++ {
		cur := c.Placements()
		if !slices.ContainsFunc(cur, func(p wire.Placement) bool { return p.Worker == worker }) {
			return nil // already moved
		}
		var keep []wire.Placement
		for _, p := range cur {
			if p.Worker != worker {
				keep = append(keep, p)
			}
		}
		var exclude []string
		if !retake {
			exclude = []string{worker}
		}
		epoch := c.nextEpoch()
		start := time.Now()
		rep, err := n.requestPlace(context.Background(), c, epoch, n.cfg.Pools, keep, exclude, resume, reason)
		if err == nil && rep.OK {
			if c.setPlacement(epoch, rep.Placements) {
				n.m.replacements.WithLabelValues(replaceReasonLabel(reason)).Inc()
				c.log().Info().Str("from", worker).Any("placements", rep.Placements).Uint32("epoch", epoch).Str("reason", reason).
					Dur("took", time.Since(start)).Msg("call re-placed")
				n.event(c, epoch, "replaced", map[string]any{"from": worker, "placements": rep.Placements, "reason": reason})
			} else {
				// The call ended meanwhile: its new workers let it go now rather than hold a slot
				// until the idle reaper or the orphan sweep. Kept workers had the last frames.
				n.releasePlacements(c, epoch, slices.DeleteFunc(slices.Clone(rep.Placements), func(p wire.Placement) bool {
					return slices.Contains(keep, p)
				}))
			}
			return nil
		}
		wait := backoff(attempt, replaceBackoff, replaceBackoffMax)
		if err == nil {
			// The router's retry-after counts from the request: a refusal that took that long
			// itself (an offer that went unanswered for the offer timeout, on a starved worker)
			// is retried after the backoff alone, not a whole round later, which under
			// starvation made a drain of a hundred calls outlast the drain timeout.
			wait = max(wait, time.Duration(rep.RetryAfterMS)*time.Millisecond-time.Since(start))
			err = &RefusedError{Code: rep.Code, Reason: rep.Reason}
		}
		if !failover(reason) && attempt >= 2 {
			return err // a migration can wait for the next drain or rebalance round
		}
		if failover(reason) {
			retake = true
		}
		if time.Now().Add(wait).After(deadline) {
			c.log().Error().Err(err).Int("attempt", attempt).Str("reason", reason).
				Msg("re-placement still failing; leaving it to the routers' reconciliation")
			return err
		}
		c.log().Warn().Err(err).Int("attempt", attempt).Str("reason", reason).Dur("wait", wait).Msg("re-placement failed; retrying")
		timer := time.NewTimer(wait)
		select {
		case <-c.done:
			timer.Stop()
			return ErrEnded
		case <-timer.C:
		case <-nudge:
			// The placement is still stranded: try again now, but no sooner than the first
			// backoff after this attempt, however many notices come. (A failover already may
			// offer the call to the worker it left; a migration still keeps it off.)
			timer.Stop()
			if rest := replaceBackoff - time.Since(start); rest > 0 {
				select {
				case <-c.done:
					return ErrEnded
				case <-time.After(rest):
				}
			}
		}
	}
}

// startReplace re-places c away from worker on a tracked goroutine and calls then (may be nil)
// with the result. With dedupe, a notice that arrives while a re-placement of c is running starts
// none: it wakes the running one instead, which tries again at once (see replace). The senders
// repeat theirs (the router every sweep) until the heartbeat shows the call at a new epoch. It
// reports false when the node is shutting down.
func (n *Node) startReplace(c *Call, worker, reason string, resume []session.LegSeq, dedupe bool, then func(error)) bool {
	if c.replacing.Add(1) > 1 && dedupe {
		c.replacing.Add(-1)
		if p := c.nudge.Load(); p != nil {
			select {
			case *p <- struct{}{}:
			default: // one is pending already
			}
		}
		return true
	}
	ok := n.g.Go(func() {
		defer c.replacing.Add(-1)
		defer guard.Recover("ingest_replace", *c.log(), nil)
		err := c.replace(worker, reason, resume)
		if then != nil {
			then(err)
		}
	})
	if !ok {
		c.replacing.Add(-1)
	}
	return ok
}

func (n *Node) onDown(m *nats.Msg) {
	var d wire.Down
	if len(m.Data) > wire.MaxControlBytes || json.Unmarshal(m.Data, &d) != nil || d.Component != subjects.Worker {
		return
	}
	for _, c := range n.Calls() {
		if slices.ContainsFunc(c.Placements(), func(p wire.Placement) bool { return p.Worker == d.ID }) {
			n.startReplace(c, d.ID, wire.ReasonWorkerDown, nil, true, nil)
		}
	}
}

// onPlace serves ingest.<id>.place: a worker's request to re-place a call away from it (drain,
// rebalance, fenced), or a router's notice that a placement is stranded (published without a
// reply subject, repeated every sweep).
func (n *Node) onPlace(m *nats.Msg) {
	fail := func(code, reason string) {
		if code == wire.CodeBadRequest {
			n.m.badRequests.WithLabelValues("place").Inc()
		}
		if m.Reply != "" {
			bus.Respond(m, wire.Fail(code, reason))
		}
	}
	if len(m.Data) > wire.MaxControlBytes {
		fail(wire.CodeBadRequest, fmt.Sprintf("request of %d bytes; at most %d", len(m.Data), wire.MaxControlBytes))
		return
	}
	var req wire.Migrate
	if err := json.Unmarshal(m.Data, &req); err != nil {
		fail(wire.CodeBadRequest, err.Error())
		return
	}
	if !subjects.Valid(req.Worker) || len(req.Progress) > session.MaxLegs {
		fail(wire.CodeBadRequest, "place needs a valid worker id and at most one progress entry per leg")
		return
	}
	c := n.Call(session.ID{Tenant: req.Tenant, Call: req.Call})
	if c == nil {
		fail(wire.CodeUnknown, "not owned here")
		return
	}
	if cur := c.Epoch(); req.Epoch != 0 && req.Epoch < cur {
		fail(wire.CodeStale, fmt.Sprintf("call is at epoch %d", cur)) // it has moved on already
		return
	}
	reason := req.Reason
	var resume []session.LegSeq
	if failover(reason) {
		// The worker has stopped already: resume from where it (or the router) says it stopped,
		// the oldest frame in the ring for legs it does not know; with nothing known the router
		// looks the progress up itself.
		if len(req.Progress) > 0 {
			resume = make([]session.LegSeq, len(c.spec.Legs))
			for i := range resume {
				resume[i] = session.LegSeq{Leg: uint8(i), Next: session.FromRingStart}
			}
			for _, ls := range req.Progress {
				if int(ls.Leg) < len(resume) && ls.Next >= 0 {
					resume[ls.Leg].Next = ls.Next
				}
			}
		}
	} else {
		resume = make([]session.LegSeq, len(c.spec.Legs))
		for i := range resume {
			resume[i] = session.LegSeq{Leg: uint8(i), Next: session.FromEpochStart}
		}
	}
	fromRouter := m.Reply == ""
	then := func(err error) {
		if err != nil {
			fail(wire.CodeNoCapacity, err.Error())
			return
		}
		if m.Reply != "" {
			bus.Respond(m, wire.OK())
		}
	}
	if fromRouter {
		c.log().Warn().Str("worker_id", req.Worker).Str("reason", reason).Uint32("at_epoch", req.Epoch).Msg("router reports the placement stranded")
	}
	if !n.startReplace(c, req.Worker, reason, resume, fromRouter, then) {
		fail(wire.CodeDraining, "ingest is shutting down")
	}
}
