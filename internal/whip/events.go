package whip

import (
	"fmt"
	"net/http"
	"sync"
	"time"
)

// sseEvent is one event of a call, as sent on its event stream.
type sseEvent struct {
	id   uint64
	kind string
	data []byte // JSON
}

// eventLog keeps a session's recent events (bounded, oldest dropped) and fans them out to the
// session's event-stream clients, each behind a bounded queue; a client too slow to keep up
// loses events (counted) rather than holding anything up.
type eventLog struct {
	m *metrics

	mu      sync.Mutex
	ring    []sseEvent
	head    int // next slot
	n       int
	nextID  uint64
	subs    map[chan sseEvent]struct{}
	maxSubs int
	done    chan struct{}
	closed  bool
}

func newEventLog(size, maxSubs int, m *metrics) *eventLog {
	return &eventLog{m: m, ring: make([]sseEvent, size), subs: map[chan sseEvent]struct{}{}, maxSubs: maxSubs,
		done: make(chan struct{})}
}

// add records an event and offers it to every client.
func (l *eventLog) add(kind string, data []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.nextID++
	e := sseEvent{id: l.nextID, kind: kind, data: data}
	l.ring[l.head] = e
	l.head = (l.head + 1) % len(l.ring)
	l.n = min(l.n+1, len(l.ring))
	for ch := range l.subs {
		select {
		case ch <- e:
		default:
			l.m.dropped.Inc()
		}
	}
}

// subscribe returns the recorded events and a queue of the ones to come; ok is false when the
// log is closed or has its maximum of clients.
func (l *eventLog) subscribe() (backlog []sseEvent, ch chan sseEvent, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || len(l.subs) >= l.maxSubs {
		return nil, nil, false
	}
	start := (l.head - l.n + len(l.ring)) % len(l.ring)
	for i := 0; i < l.n; i++ {
		backlog = append(backlog, l.ring[(start+i)%len(l.ring)])
	}
	ch = make(chan sseEvent, 64)
	l.subs[ch] = struct{}{}
	return backlog, ch, true
}

func (l *eventLog) unsubscribe(ch chan sseEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.subs, ch)
}

// close ends every client's stream.
func (l *eventLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		close(l.done)
	}
}

// sseKeepalive is how often an idle event stream sends a comment, so proxies keep it open.
const sseKeepalive = 15 * time.Second

// sseWriteTimeout bounds one write to an event stream: a client that stops reading is cut off.
const sseWriteTimeout = 10 * time.Second

// serveEvents streams a session's events as Server-Sent Events: first the recorded ones, then
// each new one, until the client leaves or the session is forgotten. Each event's data is its
// JSON: a wire.Event as published on events.<tenant>.<call>.<kind>, or a "state" event for the
// session's own state changes; both carry "kind". Events are sent without an SSE event type, so
// an EventSource's onmessage sees all of them.
func (s *Server) serveEvents(w http.ResponseWriter, r *http.Request, sess *session) {
	backlog, ch, ok := sess.events.subscribe()
	if !ok {
		s.fail(w, r, http.StatusTooManyRequests, "too many event streams for this session")
		return
	}
	defer sess.events.unsubscribe(ch)
	s.streamSSE(w, r, backlog, ch, sess.events.done)
}

// streamSSE writes backlog, then every event from ch, as Server-Sent Events, until the client
// leaves, the server stops, or done is closed (then what ch still holds is sent first).
func (s *Server) streamSSE(w http.ResponseWriter, r *http.Request, backlog []sseEvent, ch <-chan sseEvent, done <-chan struct{}) {
	s.m.sse.Inc()
	defer s.m.sse.Dec()
	// The stream outlives the HTTP server's read and write timeouts (obs.Limits): lift the read
	// deadline, and give each write its own, so a client that stops reading is still cut off.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Now().Add(sseWriteTimeout))
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	write := func(e sseEvent) error {
		_, err := fmt.Fprintf(w, "id: %d\ndata: %s\n\n", e.id, e.data)
		return err
	}
	for _, e := range backlog {
		if write(e) != nil {
			return
		}
	}
	if rc.Flush() != nil {
		return
	}
	t := time.NewTicker(sseKeepalive)
	defer t.Stop()
	for {
		select {
		case e := <-ch:
			_ = rc.SetWriteDeadline(time.Now().Add(sseWriteTimeout))
			if write(e) != nil || rc.Flush() != nil {
				return
			}
		case <-t.C:
			_ = rc.SetWriteDeadline(time.Now().Add(sseWriteTimeout))
			if _, err := fmt.Fprint(w, ": keepalive\n\n"); err != nil || rc.Flush() != nil {
				return
			}
		case <-done:
			for {
				select {
				case e := <-ch:
					if write(e) != nil {
						return
					}
				default:
					_ = rc.Flush()
					return
				}
			}
		case <-r.Context().Done():
			return
		case <-s.stop:
			return
		}
	}
}
