package bus

import (
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

// PublishEvent publishes a call event on events.<tenant>.<call>.<kind>. The caller fills Kind,
// Tenant, Call, Epoch and Source; PublishEvent sets the version, the time (now, unless set; UTC
// either way) and Data, data as JSON.
func PublishEvent(nc *nats.Conn, ev wire.Event, data any) error {
	body, err := json.Marshal(data)
	if err != nil {
		return fmt.Errorf("bus: event %s: %w", ev.Kind, err)
	}
	ev.V, ev.Data = wire.V, body
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	ev.Time = ev.Time.UTC()
	return Publish(nc, subjects.Event(ev.Tenant, ev.Call, ev.Kind), ev)
}

// Events collects the call events published on a subject (events.>, a tenant's or a call's
// events), in arrival order; for tests and tools that watch calls. Messages that are not events
// are skipped.
type Events struct {
	sub *nats.Subscription
	mu  sync.Mutex
	evs []wire.Event
}

// CollectEvents subscribes nc to subject and collects what arrives; the subscription is in place
// on the server when it returns.
func CollectEvents(nc *nats.Conn, subject string) (*Events, error) {
	e := &Events{}
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		var ev wire.Event
		if json.Unmarshal(m.Data, &ev) != nil {
			return
		}
		e.mu.Lock()
		e.evs = append(e.evs, ev)
		e.mu.Unlock()
	})
	if err != nil {
		return nil, err
	}
	if err := nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return nil, err
	}
	e.sub = sub
	return e, nil
}

// All returns the events collected so far.
func (e *Events) All() []wire.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]wire.Event(nil), e.evs...)
}

// Of returns the events of kind collected so far.
func (e *Events) Of(kind string) []wire.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []wire.Event
	for _, ev := range e.evs {
		if ev.Kind == kind {
			out = append(out, ev)
		}
	}
	return out
}

// Close stops collecting.
func (e *Events) Close() error { return e.sub.Unsubscribe() }
