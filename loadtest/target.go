package loadtest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/loadtest/account"
	"github.com/nats-io/nats.go"
)

// Target is where the pacer's calls go: callrouter's SIP or WHIP ingest, plain NATS (the
// baseline), or an ingest node in the tester's process (package inproc).
type Target interface {
	// Start sets a call up (placement, or a plain subscription) and returns it ready to send. A
	// refusal is a *RefusedError.
	Start(ctx context.Context, spec session.Spec) (Call, error)
}

// Call is one call being played. Send returns ErrEnded once the system under test has ended it.
type Call interface {
	Send(leg int, payload []byte) error
	End()
}

// RawPrefix is the subject class of the baseline's frames: rawbase.<tenant>.<call>.<leg>, the same
// token count and lengths as callrouter's audio subjects.
const RawPrefix = "rawbase"

// rawTarget is the baseline: the same frames (same envelope, sizes and rate) from plain
// publisher connections (one, or one per ingest node of the callrouter phase; a call's frames
// all on one) to plain per-call subscriptions spread over subscriber connections, with no
// router, no worker queue and no processors.
type rawTarget struct {
	pubs    []*nats.Conn
	subs    []*nats.Conn
	col     *Collector
	pending int
	next    atomic.Uint32
}

func (t *rawTarget) Start(ctx context.Context, spec session.Spec) (Call, error) {
	n := int(t.next.Add(1))
	nc, pub := t.subs[n%len(t.subs)], t.pubs[n%len(t.pubs)]
	rs := &rawSub{col: t.col, call: spec.Call, key: account.Key(spec.Call), legs: make([]account.Leg, len(spec.Legs))}
	for i := range rs.legs {
		rs.legs[i] = account.NewLeg()
	}
	sub, err := nc.Subscribe(RawPrefix+"."+spec.Tenant+"."+spec.Call+".*", rs.onMsg)
	if err != nil {
		return nil, err
	}
	rs.sub = sub
	if err := sub.SetPendingLimits(t.pending, t.pending*(frame.HeaderLen+frame.MaxPayload)); err != nil {
		return nil, err
	}
	// One round trip, as placement's subscribe-then-answer has, so that no frame precedes the
	// subscription.
	fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := nc.FlushWithContext(fctx); err != nil {
		_ = sub.Unsubscribe()
		return nil, err
	}
	rc := &rawCall{nc: pub, legs: make([]rawLeg, len(spec.Legs))}
	for i, l := range spec.Legs {
		if err := subjects.Check("leg", l.Name); err != nil {
			return nil, err
		}
		rc.legs[i] = rawLeg{subject: RawPrefix + "." + spec.Tenant + "." + spec.Call + "." + l.Name,
			h:       frame.Header{Codec: l.Codec, Leg: l.Index, SampleRate: l.Rate, Epoch: 1, DurationUS: uint16(frame.Duration / time.Microsecond)},
			samples: l.Rate / 50}
	}
	return rc, nil
}

type rawLeg struct {
	subject string
	h       frame.Header
	samples uint32
	buf     []byte
}

type rawCall struct {
	nc   *nats.Conn
	mu   sync.Mutex
	legs []rawLeg
}

func (c *rawCall) publish(leg int, payload []byte, flags frame.Flags) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if leg < 0 || leg >= len(c.legs) {
		return ErrLeg
	}
	l := &c.legs[leg]
	l.h.Flags = flags
	l.h.Capture = time.Now().UnixNano()
	l.h.MediaTS = l.h.Seq * l.samples
	b, err := frame.Append(l.buf[:0], &l.h, payload)
	if err != nil {
		return err
	}
	l.buf = b
	l.h.Seq++
	return c.nc.Publish(l.subject, b)
}

func (c *rawCall) Send(leg int, payload []byte) error { return c.publish(leg, payload, 0) }

func (c *rawCall) End() {
	for i := range c.legs {
		_ = c.publish(i, nil, frame.FlagLast)
	}
}

// rawSub is the baseline's receiving side of one call.
type rawSub struct {
	col   *Collector
	call  string
	key   uint32
	sub   *nats.Subscription
	legs  []account.Leg
	ended uint16
	done  bool
	end   func() // the floor's: forget the call; nil: unsubscribe sub
}

// onMsg runs on the subscription's goroutine, one message at a time.
func (s *rawSub) onMsg(m *nats.Msg) {
	var h frame.Header
	if _, err := h.Unmarshal(m.Data); err != nil || int(h.Leg) >= len(s.legs) || s.done {
		return
	}
	t := &s.legs[h.Leg]
	now := time.Now()
	if h.Has(frame.FlagLast) {
		if next := t.Next(); next >= 0 && int64(h.Seq) > next { // tail loss shows as a gap before the last frame
			t.Gap(account.Gap{Leg: h.Leg, From: uint32(next), To: h.Seq - 1, Cause: account.CauseBus})
			s.col.Loss(s.key, int64(h.Seq)-next, now)
		}
		s.ended |= 1 << h.Leg
		if int(s.ended) == 1<<len(s.legs)-1 {
			s.done = true
			if s.end != nil {
				s.end()
			} else {
				_ = s.sub.Unsubscribe()
			}
			s.col.Report(s.call, "end", s.legs)
		}
		return
	}
	before := t.Lost
	inOrder := t.Observe(h.Seq)
	if t.Lost > before {
		s.col.Loss(s.key, t.Lost-before, now)
	}
	if inOrder {
		s.col.Frame(s.key, now.Sub(time.Unix(0, h.Capture)), now)
	}
}

func (t *rawTarget) String() string {
	return fmt.Sprintf("raw NATS (%d subscriber connections)", len(t.subs))
}
