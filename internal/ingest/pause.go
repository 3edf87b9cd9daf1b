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
// from the flag on the frames it is replayed or receives.
//
// A pause has sources (PauseSource), each held and lifted on its own: the call is paused while
// any source holds it, so an operator's resume never lifts the pause a stream asked for, nor
// the other way round. Each source's hold ends by itself after Config.MaxPause.

// PauseSource is who holds a call's pause.
type PauseSource uint8

const (
	// PauseOperator is the secure pause of ingest.<id>.pause and router.api.pause.
	PauseOperator PauseSource = iota
	// PauseStream is the media stream's own pause (an AudioHook client's "paused").
	PauseStream
	pauseSources
)

var pauseSourceNames = [pauseSources]string{"operator", "stream"}

func (s PauseSource) String() string {
	if s < pauseSources {
		return pauseSourceNames[s]
	}
	return "unknown"
}

// pauseState is a call's pause; guarded by Call.mu. on and since describe the call (paused while
// any source holds it); hold, per source. on comes last: every frame reads it, with the Call
// fields that follow.
type pauseState struct {
	since time.Time
	hold  [pauseSources]pauseHold
	on    bool
}

type pauseHold struct {
	on           bool
	since, until time.Time
}

// until is when the last hold ends by itself.
func (p *pauseState) until() time.Time {
	var u time.Time
	for _, h := range p.hold {
		if h.on && h.until.After(u) {
			u = h.until
		}
	}
	return u
}

// sources names the sources holding the pause.
func (p *pauseState) sources() []string {
	var s []string
	for i, h := range p.hold {
		if h.on {
			s = append(s, PauseSource(i).String())
		}
	}
	return s
}

// Paused reports whether the call is in a secure pause. Transports that publish their own events
// (SIP DTMF) mask digits while it is.
func (c *Call) Paused() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pause.on
}

// SetPaused holds (on) or lifts the operator's pause; see SetPausedBy.
func (c *Call) SetPaused(on bool, reason, by string) wire.PauseReply {
	return c.SetPausedBy(PauseOperator, on, reason, by)
}

// SetPausedBy holds (on) or lifts src's pause and publishes a "paused" or "resumed" event when
// the call's state changed (the first hold, the last lift). reason and by go into the event. It
// returns the reply that describes the state after it, for the requester.
func (c *Call) SetPausedBy(src PauseSource, on bool, reason, by string) wire.PauseReply {
	if src >= pauseSources {
		return wire.PauseReply{Reply: wire.Fail(wire.CodeBadRequest, "unknown pause source")}
	}
	return c.setPaused(src, on, reason, by, time.Now(), false)
}

// setPaused is SetPausedBy; with expire it lifts src's hold only once its bound has passed by
// now, checked under the same lock as the change, so it never ends a hold begun meanwhile.
func (c *Call) setPaused(src PauseSource, on bool, reason, by string, now time.Time, expire bool) wire.PauseReply {
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return wire.PauseReply{Reply: wire.Fail(wire.CodeUnknown, "call ended")}
	}
	h := &c.pause.hold[src]
	if expire && (on || !h.on || now.Before(h.until)) {
		c.mu.Unlock()
		return wire.PauseReply{} // the reaper's check, every heartbeat: nothing to build
	}
	if h.on != on {
		if on {
			*h = pauseHold{on: true, since: now, until: now.Add(c.n.cfg.MaxPause)}
		} else {
			*h = pauseHold{}
		}
	}
	was := c.pause.on
	c.pause.on = c.pause.sources() != nil
	changed := was != c.pause.on
	var held time.Duration
	switch {
	case changed && on:
		c.pause.since = now
	case changed:
		held = now.Sub(c.pause.since)
		c.pause.since = time.Time{}
	}
	rep := wire.PauseReply{Reply: wire.OK(), Ingest: c.n.cfg.ID, Paused: c.pause.on, Since: c.pause.since, Until: c.pause.until(),
		Sources: c.pause.sources(), Seq: make([]session.LegSeq, len(c.legs))}
	for i := range c.legs {
		rep.Seq[i] = session.LegSeq{Leg: uint8(i), Next: int64(c.legs[i].seq)}
	}
	// The event goes out under the lock that orders the call's frames, so "paused" and "resumed"
	// events of racing requests (a resume and the expiry) keep the order of the changes.
	defer c.mu.Unlock()
	if expire {
		c.n.m.pauses.WithLabelValues("expired").Inc()
	}
	if !changed {
		return rep
	}
	epoch := c.epoch
	if on {
		c.n.m.pauses.WithLabelValues("paused").Inc()
		c.log().Info().Str("reason", reason).Str("by", by).Stringer("source", src).Msg("call paused")
		c.n.event(c, epoch, "paused", map[string]any{"reason": reason, "by": by, "source": src.String(), "until": rep.Until.UTC(), "seq": rep.Seq})
	} else {
		c.n.m.pauses.WithLabelValues("resumed").Inc()
		c.log().Info().Str("reason", reason).Str("by", by).Stringer("source", src).Dur("held", held).Msg("call resumed")
		c.n.event(c, epoch, "resumed", map[string]any{"reason": reason, "by": by, "source": src.String(), "paused_ms": held.Milliseconds(), "seq": rep.Seq})
	}
	return rep
}

// expirePause lifts every hold that has lasted MaxPause.
func (c *Call) expirePause(now time.Time) {
	for src := range pauseSources {
		c.setPaused(src, false, wire.ResumeMaxPause, c.n.pauseBy, now, true)
	}
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
