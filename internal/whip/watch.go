package whip

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/nats-io/nats.go"
)

// maxWatchCall bounds the length of a watched call id (a SIP Call-ID, say), before encoding.
const maxWatchCall = 1024

// watchQueue is a watch stream's queue of events not yet written; a client too slow to keep up
// loses events (callrouter_whip_event_stream_dropped_total), as on a session's stream.
const watchQueue = 256

// watchers bounds the watch streams of a server: at most max in all (Config.MaxSessions) and
// perCall on one call (Config.SSEClients).
type watchers struct {
	mu    sync.Mutex
	n     int
	calls map[string]int
}

func (ws *watchers) acquire(key string, max, perCall int) bool {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.calls == nil {
		ws.calls = map[string]int{}
	}
	if ws.n >= max || ws.calls[key] >= perCall {
		return false
	}
	ws.n++
	ws.calls[key]++
	return true
}

func (ws *watchers) release(key string) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.n--
	if ws.calls[key]--; ws.calls[key] <= 0 {
		delete(ws.calls, key)
	}
}

// watch serves GET <path>/calls/<call>/events: the events of any call of the token's tenant
// (a SIP call, a call another page placed), as Server-Sent Events, from the moment of the
// request on. The first message is {"kind":"state","state":"watching",…}: the subscription is
// in place. The stream ends Linger after the call's "end" event, when the client leaves, or when
// the server stops. No backlog: events published before the request are not sent.
func (s *Server) watch(w http.ResponseWriter, r *http.Request) {
	rest, _ := strings.CutPrefix(r.URL.EscapedPath(), s.cfg.Path+"/calls/")
	esc, sub, _ := strings.Cut(rest, "/")
	call, err := url.PathUnescape(esc)
	switch {
	case sub != "events":
		s.fail(w, r, http.StatusNotFound, "not found")
		return
	case r.Method == http.MethodOptions:
		w.WriteHeader(http.StatusNoContent)
		return
	case r.Method != http.MethodGet:
		w.Header().Set("Allow", "GET, OPTIONS")
		s.fail(w, r, http.StatusMethodNotAllowed, "method not allowed")
		return
	case err != nil || call == "" || len(call) > maxWatchCall || !utf8.ValidString(call):
		s.fail(w, r, http.StatusBadRequest, "bad call id")
		return
	}
	node := s.node.Load()
	if node == nil {
		s.unavailable(w, r, s.cfg.RetryAfter, "not serving")
		return
	}
	// A watch costs a NATS subscription: it is rate-limited per source like a POST.
	if !s.post.Allow(remoteIP(r.RemoteAddr), time.Now()) {
		w.Header().Set("Retry-After", "1")
		s.fail(w, r, http.StatusTooManyRequests, "too many requests from this address")
		return
	}
	tenant, err := s.auth.tenant(r.Header.Get("Authorization"))
	if err != nil {
		w.Header().Set("WWW-Authenticate", `Bearer realm="callrouter"`)
		s.fail(w, r, http.StatusUnauthorized, err.Error())
		return
	}
	tenant, call = subjects.Encode(tenant), subjects.Encode(call)
	key := tenant + "." + call
	if !s.watching.acquire(key, s.cfg.MaxSessions, s.cfg.SSEClients) {
		s.fail(w, r, http.StatusTooManyRequests, "too many event streams")
		return
	}
	defer s.watching.release(key)

	ch := make(chan sseEvent, watchQueue)
	done := make(chan struct{})
	var (
		mu     sync.Mutex
		id     uint64
		ending *time.Timer
	)
	defer func() {
		mu.Lock()
		if ending != nil {
			ending.Stop()
		}
		mu.Unlock()
	}()
	push := func(kind string, data []byte) {
		mu.Lock()
		defer mu.Unlock()
		id++
		select {
		case ch <- sseEvent{id: id, kind: kind, data: data}:
		default:
			s.m.dropped.Inc()
		}
		if kind == "end" && ending == nil {
			ending = time.AfterFunc(s.cfg.Linger, func() { close(done) })
		}
	}
	ns, err := node.NC().Subscribe(subjects.EventsCall(tenant, call), guard.Handler("whip_watch", s.log, func(m *nats.Msg) {
		kind := m.Subject
		if e, err := subjects.ParseEvent(m.Subject); err == nil {
			kind = e.Kind
		}
		push(kind, append([]byte(nil), m.Data...))
	}))
	if err != nil {
		s.unavailable(w, r, s.cfg.RetryAfter, "cannot subscribe to the call's events")
		return
	}
	defer func() { _ = ns.Unsubscribe() }()
	// The server has the interest once the flush returns: events from now on reach the stream.
	if err := node.NC().FlushTimeout(2 * time.Second); err != nil {
		s.unavailable(w, r, s.cfg.RetryAfter, "cannot subscribe to the call's events")
		return
	}
	b, _ := json.Marshal(map[string]any{"kind": "state", "source": "ingest/whip", "state": "watching",
		"tenant": tenant, "call": call, "time": time.Now().UTC()})
	s.streamSSE(w, r, []sseEvent{{id: 0, kind: "state", data: b}}, ch, done)
}
