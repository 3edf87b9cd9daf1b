package ingest

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

// replayHeadroom is left free under the server's max_payload for the reply's subject and
// headers.
const replayHeadroom = 1024

// checkRanges refuses a replay request before any work: at most one range per leg of the call,
// each leg once, each range well formed.
func checkRanges(legs []wire.LegRange, callLegs int) error {
	if len(legs) == 0 || len(legs) > callLegs {
		return fmt.Errorf("%d leg ranges for a call of %d legs", len(legs), callLegs)
	}
	var seen [session.MaxLegs]bool
	for _, r := range legs {
		switch {
		case int(r.Leg) >= callLegs:
			return fmt.Errorf("leg %d: the call has %d legs", r.Leg, callLegs)
		case seen[r.Leg]:
			return fmt.Errorf("leg %d asked for twice", r.Leg)
		case r.From < session.FromRingStart || r.From > 1<<32:
			return fmt.Errorf("leg %d: from %d out of range", r.Leg, r.From)
		case r.To < 0 || r.To > 1<<32 || (r.To > 0 && r.From >= r.To):
			return fmt.Errorf("leg %d: to %d out of range", r.Leg, r.To)
		}
		seen[r.Leg] = true
	}
	return nil
}

// onReplay serves ingest.<id>.replay. A reply that would exceed the server's max_payload stops
// at the last frame that fits and names where the rest begins in wire.ReplayNextHeader; the
// requester asks again from there (wire.RequestReplay).
func (n *Node) onReplay(m *nats.Msg) {
	refuse := func(code, reason string) {
		if code == wire.CodeBadRequest {
			n.m.badRequests.WithLabelValues("replay").Inc()
		}
		bus.Respond(m, wire.Fail(code, reason))
	}
	if len(m.Data) > wire.MaxControlBytes {
		refuse(wire.CodeBadRequest, fmt.Sprintf("request of %d bytes; at most %d", len(m.Data), wire.MaxControlBytes))
		return
	}
	var req wire.ReplayRequest
	if err := json.Unmarshal(m.Data, &req); err != nil {
		refuse(wire.CodeBadRequest, err.Error())
		return
	}
	c := n.Call(session.ID{Tenant: req.Tenant, Call: req.Call})
	if c == nil {
		refuse(wire.CodeUnknown, "not owned here")
		return
	}
	if cur := c.Epoch(); req.Epoch < cur {
		// The asker has been superseded: it must not process the new owner's frames.
		refuse(wire.CodeStale, fmt.Sprintf("call is at epoch %d", cur))
		return
	}
	if err := checkRanges(req.Legs, len(c.spec.Legs)); err != nil {
		refuse(wire.CodeBadRequest, err.Error())
		return
	}
	// Only a worker the call is placed on reads its ring: every worker identity may request
	// ingest.*.replay (the subject names no tenant), and a worker of a pool dedicated to other
	// tenants must not read this call. A new owner asks only once the call has switched to it.
	if !slices.ContainsFunc(c.Placements(), func(p wire.Placement) bool { return p.Worker == req.Worker }) {
		refuse(wire.CodeBadRequest, fmt.Sprintf("call is not placed on worker %q", req.Worker))
		return
	}
	limit := int(n.nc.MaxPayload()) - replayHeadroom
	var out []byte
	for _, r := range req.Legs {
		var next uint32
		var more bool
		if out, next, more = c.replay(out, r, limit); more {
			reply := nats.NewMsg(m.Reply)
			reply.Data = out
			reply.Header.Set(wire.ReplayNextHeader, wire.ReplayNext(r.Leg, next))
			n.m.replays.Inc()
			n.flushFrames(c)
			_ = m.RespondMsg(reply)
			return
		}
	}
	n.m.replays.Inc()
	n.flushFrames(c)
	_ = m.Respond(out)
}
