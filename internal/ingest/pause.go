package ingest

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

// A secure pause (PCI) withholds a call's audio from everything downstream while, say, a card
// number is keyed in. Ingest owns the call, so it owns the pause: while a call is paused every
// frame it publishes carries frame.FlagPaused and no payload, in the replay ring as on the bus,
// so no worker, processor, recording or replay ever sees the span's audio, and the legs stay
// gap-free (workers account the frames as paused, not lost). The state lives on the Call, not
// on a placement: a failover or migration during a pause keeps it, and the new worker learns it
// from the flag on the frames it is replayed or receives. A pause that is never resumed ends by
// itself after Config.MaxPause.

// pauseState is a call's secure pause; guarded by Call.mu.
type pauseState struct {
	on    bool
	since time.Time
	until time.Time
}

// Paused reports whether the call is in a secure pause. Transports that publish their own events
// (SIP DTMF) mask digits while it is.
func (c *Call) Paused() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pause.on
}

// SetPaused pauses (on) or resumes the call and publishes a "paused" or "resumed" event when the
// state changed. reason and by go into the event. It returns the reply that describes the state
// after it, for the requester.
func (c *Call) SetPaused(on bool, reason, by string) wire.PauseReply {
	return c.setPaused(on, reason, by, time.Now(), false)
}

// setPaused is SetPaused; with expire it resumes only a pause whose bound has passed by now,
// checked under the same lock as the change, so it never ends a pause begun meanwhile.
func (c *Call) setPaused(on bool, reason, by string, now time.Time, expire bool) wire.PauseReply {
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return wire.PauseReply{Reply: wire.Fail(wire.CodeUnknown, "call ended")}
	}
	changed := c.pause.on != on && (!expire || !now.Before(c.pause.until))
	if expire && !changed {
		c.mu.Unlock()
		return wire.PauseReply{} // the reaper's check, every heartbeat: nothing to build
	}
	var held time.Duration
	if changed {
		if on {
			c.pause = pauseState{on: true, since: now, until: now.Add(c.n.cfg.MaxPause)}
		} else {
			held = now.Sub(c.pause.since)
			c.pause = pauseState{}
		}
	}
	rep := wire.PauseReply{Reply: wire.OK(), Ingest: c.n.cfg.ID, Paused: c.pause.on, Since: c.pause.since, Until: c.pause.until,
		Seq: make([]session.LegSeq, len(c.legs))}
	for i := range c.legs {
		rep.Seq[i] = session.LegSeq{Leg: uint8(i), Next: int64(c.legs[i].seq)}
	}
	// The event goes out under the lock that orders the call's frames, so "paused" and "resumed"
	// events of racing requests (a resume and the expiry) keep the order of the changes.
	defer c.mu.Unlock()
	if !changed {
		return rep
	}
	epoch := c.epoch
	if on {
		c.n.m.pauses.WithLabelValues("paused").Inc()
		c.log.Info().Str("reason", reason).Str("by", by).Msg("call paused")
		c.n.event(c, epoch, "paused", map[string]any{"reason": reason, "by": by, "until": rep.Until.UTC(), "seq": rep.Seq})
	} else {
		if expire {
			c.n.m.pauses.WithLabelValues("expired").Inc()
		}
		c.n.m.pauses.WithLabelValues("resumed").Inc()
		c.log.Info().Str("reason", reason).Str("by", by).Dur("held", held).Msg("call resumed")
		c.n.event(c, epoch, "resumed", map[string]any{"reason": reason, "by": by, "paused_ms": held.Milliseconds(), "seq": rep.Seq})
	}
	return rep
}

// expirePause resumes a pause that has lasted MaxPause.
func (c *Call) expirePause(now time.Time) {
	c.setPaused(false, wire.ResumeMaxPause, "ingest/"+c.n.cfg.ID, now, true)
}

// onPause serves ingest.<id>.pause (wire.PauseRequest), from routers (router.api.pause forwards
// here) and from services that know the owner.
func (n *Node) onPause(m *nats.Msg) {
	fail := func(code, reason string) {
		if code == wire.CodeBadRequest {
			n.m.badRequests.WithLabelValues("pause").Inc()
		}
		bus.Respond(m, wire.PauseReply{Reply: wire.Fail(code, reason), Ingest: n.cfg.ID})
	}
	if len(m.Data) > wire.MaxControlBytes {
		fail(wire.CodeBadRequest, fmt.Sprintf("request of %d bytes; at most %d", len(m.Data), wire.MaxControlBytes))
		return
	}
	var req wire.PauseRequest
	if err := json.Unmarshal(m.Data, &req); err != nil {
		fail(wire.CodeBadRequest, err.Error())
		return
	}
	if err := req.Check(); err != nil {
		fail(wire.CodeBadRequest, err.Error())
		return
	}
	c := n.Call(session.ID{Tenant: req.Tenant, Call: req.Call})
	if c == nil {
		fail(wire.CodeUnknown, "not owned here")
		return
	}
	bus.Respond(m, c.SetPaused(req.Paused, req.Reason, req.By))
}
