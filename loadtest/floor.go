package loadtest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/loadtest/account"
	"github.com/nats-io/nats.go"
)

// floorPath names the floor phase in reports.
const floorPath = "raw NATS publishers → one wildcard subscriber per connection"

// floorTarget is the floor: the baseline's frames, but each subscriber connection reads its
// share of the calls through one wildcard subscription (one goroutine, no per-call subscription
// or hand-off), the fastest consumption NATS allows. The baseline's per-call subscriptions are
// what callrouter's workers do (like for like); the floor is how far that is from the least a
// consumer can do. Connection k's calls are published on rawbase.<tenant>~f<k>.<call>.<leg>:
// the same token count as audio subjects, inside the baseline's permissions (RawPrefix.>).
type floorTarget struct {
	pubs  []*nats.Conn
	conns []*floorConn
	col   *Collector
	mu    sync.Mutex
	next  int
}

// floorConn is one subscriber connection and the calls its wildcard subscription serves.
type floorConn struct {
	nc     *nats.Conn
	tenant string // the subject's tenant token: the run's tenant and this connection's index
	sub    *nats.Subscription
	mu     sync.Mutex
	calls  map[string]*rawSub
}

func newFloorTarget(pubs, subs []*nats.Conn, tenant string, col *Collector, pending, calls int) (*floorTarget, error) {
	t := &floorTarget{pubs: pubs, col: col}
	for k, nc := range subs {
		fc := &floorConn{nc: nc, tenant: fmt.Sprintf("%s~f%d", tenant, k), calls: map[string]*rawSub{}}
		if err := subjects.Check("tenant", fc.tenant); err != nil {
			return nil, err
		}
		sub, err := nc.Subscribe(RawPrefix+"."+fc.tenant+".>", fc.onMsg)
		if err != nil {
			return nil, err
		}
		// The baseline's per-call bound, times the calls this connection carries.
		share := max(1, (calls+len(subs)-1)/len(subs))
		if err := sub.SetPendingLimits(pending*share, pending*share*(frame.HeaderLen+frame.MaxPayload)); err != nil {
			return nil, err
		}
		fc.sub = sub
		t.conns = append(t.conns, fc)
	}
	return t, nil
}

func (t *floorTarget) Start(ctx context.Context, spec session.Spec) (Call, error) {
	t.mu.Lock()
	fc, pub := t.conns[t.next%len(t.conns)], t.pubs[t.next%len(t.pubs)]
	t.next++
	t.mu.Unlock()
	rs := &rawSub{col: t.col, call: spec.Call, key: account.Key(spec.Call), legs: make([]account.Leg, len(spec.Legs))}
	for i := range rs.legs {
		rs.legs[i] = account.NewLeg()
	}
	rs.end = func() { fc.forget(spec.Call) }
	fc.mu.Lock()
	fc.calls[spec.Call] = rs
	fc.mu.Unlock()
	rc := &rawCall{nc: pub, legs: make([]rawLeg, len(spec.Legs))}
	for i, l := range spec.Legs {
		if err := subjects.Check("leg", l.Name); err != nil {
			fc.forget(spec.Call)
			return nil, err
		}
		rc.legs[i] = rawLeg{subject: RawPrefix + "." + fc.tenant + "." + spec.Call + "." + l.Name,
			h:       frame.Header{Codec: l.Codec, Leg: l.Index, SampleRate: l.Rate, Epoch: 1, DurationUS: uint16(frame.Duration / time.Microsecond)},
			samples: l.Rate / 50}
	}
	// One round trip, as the baseline's subscribe + flush has.
	fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := fc.nc.FlushWithContext(fctx); err != nil {
		fc.forget(spec.Call)
		return nil, err
	}
	return rc, nil
}

// onMsg runs on the connection's one subscription goroutine.
func (fc *floorConn) onMsg(m *nats.Msg) {
	// rawbase.<tenant>.<call>.<leg>
	rest := m.Subject[len(RawPrefix)+1+len(fc.tenant)+1:]
	call, _, ok := strings.Cut(rest, ".")
	if !ok {
		return
	}
	fc.mu.Lock()
	rs := fc.calls[call]
	fc.mu.Unlock()
	if rs != nil {
		rs.onMsg(m)
	}
}

func (fc *floorConn) forget(call string) {
	fc.mu.Lock()
	delete(fc.calls, call)
	fc.mu.Unlock()
}

func (t *floorTarget) close() {
	for _, fc := range t.conns {
		_ = fc.sub.Unsubscribe()
	}
}

func (t *floorTarget) String() string {
	return fmt.Sprintf("raw NATS floor (%d subscriber connections, one wildcard subscription each)", len(t.conns))
}
