// Package audiohook is callrouter's Genesys Cloud AudioHook ingest (protocol v2): a WebSocket
// server that ingest mounts on its public HTTP side. The upgrade is authenticated by X-API-KEY and
// an HTTP message signature (RFC 9421, hmac-sha256 with the key's base64-decoded client secret);
// each key belongs to a tenant. The client's "open" places a call (external → leg caller,
// internal → leg agent) and is answered by "opened" with at most one of the offered formats
// (PCMU or L16 at 8 kHz); its binary audio, of any size, is re-cut into 20 ms frames on the
// call's timeline by timeline.Cutter, with reported discards gap-filled. ping/pong, update,
// discarded, paused/resumed, error and close → closed follow the protocol; call events the client
// asks for (customConfig {"events":["dtmf"]}) come back as "event" messages.
package audiohook

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callrouter/callrouter/internal/drain"
	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Deps are the server's collaborators.
type Deps struct {
	Log      zerolog.Logger
	Registry prometheus.Registerer
}

// Server is the AudioHook endpoint: an http.Handler (Mount it) and an ingest.Source (Run it).
type Server struct {
	cfg  Config
	log  zerolog.Logger
	m    *metrics
	auth *authenticator
	rate *guard.SourceRate

	node    atomic.Pointer[ingest.Node]
	ready   chan struct{}
	stop    chan struct{} // closed when Run ends the sessions still up
	started atomic.Bool
	live    *drain.Sessions // a slot per session, held until its goroutine returns

	// calls are the sessions holding a call, by tenant and session id: what an open with
	// continuedSessions takes over (session.takeOver).
	callsMu sync.Mutex
	calls   map[string]*session

	now func() time.Time // tests move the clock of signature checks
}

var _ ingest.Source = (*Server)(nil)

// New validates cfg and builds a server; it does no I/O. Load a key file first with
// cfg.LoadKeys.
func New(cfg Config, d Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if d.Registry == nil {
		d.Registry = prometheus.NewRegistry()
	}
	m := newMetrics(d.Registry)
	return &Server{cfg: cfg, log: d.Log.With().Str("source", "audiohook").Logger(), m: m, auth: newAuthenticator(&cfg), rate: guard.NewSourceRate(cfg.UpgradeRate, cfg.UpgradeBurst),
		ready: make(chan struct{}), stop: make(chan struct{}), now: time.Now, calls: map[string]*session{},
		live: drain.New(cfg.MaxSessions, cfg.MaxSessionsPerTenant, func(n int) { m.sessions.Set(float64(n)) })}, nil
}

// holding registers sess as holding its call.
func (s *Server) holding(sess *session) {
	s.callsMu.Lock()
	defer s.callsMu.Unlock()
	s.calls[sess.tenant+"\x00"+sess.id] = sess
}

// released forgets sess, unless another session of the same id holds the call now.
func (s *Server) released(sess *session) {
	s.callsMu.Lock()
	defer s.callsMu.Unlock()
	if k := sess.tenant + "\x00" + sess.id; s.calls[k] == sess {
		delete(s.calls, k)
	}
}

// holder returns the session of tenant with id that holds a call, or nil.
func (s *Server) holder(tenant, id string) *session {
	s.callsMu.Lock()
	defer s.callsMu.Unlock()
	return s.calls[tenant+"\x00"+id]
}

// Mount serves the endpoint at Config.Path on mux.
func (s *Server) Mount(mux *http.ServeMux) { mux.Handle(s.cfg.Path, s) }

// Ready is closed once Run takes sessions.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Sessions returns the sessions holding a slot.
func (s *Server) Sessions() int { return s.live.Live() }

// Run takes sessions into n until ctx ends. Then it drains: upgrades get 503 while the sessions
// up have the drain timeout to close; the rest get "disconnect" (reason error, "server shutting
// down"), and Run returns once every session has ended.
func (s *Server) Run(ctx context.Context, n *ingest.Node) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("audiohook: Run called twice")
	}
	s.node.Store(n)
	close(s.ready)
	s.log.Info().Str("path", s.cfg.Path).Int("keys", len(s.cfg.Keys)).Msg("audiohook endpoint serving")
	<-ctx.Done()
	if k := s.live.Live(); k > 0 && s.cfg.DrainTimeout > 0 {
		s.log.Info().Int("sessions", k).Dur("timeout", s.cfg.DrainTimeout).Msg("audiohook draining")
	}
	s.live.Drain(s.cfg.DrainTimeout)
	close(s.stop)
	s.live.Wait()
	s.node.Store(nil)
	return nil
}

func (s *Server) refuse(w http.ResponseWriter, code int, result, msg string) {
	s.m.upgrades.WithLabelValues(result).Inc()
	if code == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", strconv.Itoa(int(s.cfg.RetryAfter/time.Second)))
	}
	http.Error(w, msg, code)
}

// ServeHTTP authenticates an upgrade request, takes a slot, and runs the session on the
// request's goroutine until it ends.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		s.refuse(w, http.StatusMethodNotAllowed, "bad_request", "AudioHook: WebSocket upgrade (GET) only")
		return
	}
	if !s.rate.Allow(remoteIP(r.RemoteAddr), start) {
		w.Header().Set("Retry-After", "1")
		s.m.upgrades.WithLabelValues("rate_limited").Inc()
		http.Error(w, "AudioHook: too many requests from this address", http.StatusTooManyRequests)
		return
	}
	id, org := r.Header.Get(hdrSession), r.Header.Get(hdrOrg)
	if id == "" || len(id) > 128 || org == "" || len(org) > 128 {
		s.refuse(w, http.StatusBadRequest, "bad_request", "Audiohook-Session-Id and Audiohook-Organization-Id are required")
		return
	}
	n := s.node.Load()
	if n == nil || s.live.Draining() {
		s.refuse(w, http.StatusServiceUnavailable, "unavailable", "AudioHook: this node takes no new sessions")
		return
	}
	tenant, err := s.auth.check(r, s.now())
	if err != nil {
		s.log.Info().Err(err).Str("remote", r.RemoteAddr).Str("session", id).Msg("audiohook upgrade refused")
		// Every refusal takes at least FailDelay, so its timing tells nothing about the key.
		t := time.NewTimer(s.cfg.FailDelay - time.Since(start))
		select {
		case <-t.C:
		case <-r.Context().Done():
		}
		t.Stop()
		s.refuse(w, http.StatusUnauthorized, "unauthorized", "AudioHook: unauthorized")
		return
	}
	if err := s.live.Acquire(tenant); err != nil {
		msg := "AudioHook: too many sessions"
		if errors.Is(err, drain.ErrDraining) {
			msg = "AudioHook: this node takes no new sessions"
		}
		s.refuse(w, http.StatusServiceUnavailable, "unavailable", msg)
		return
	}
	defer s.live.Release(tenant)
	// The HTTP server's read and write timeouts (obs.Limits) would cut the stream: lift them; the
	// session bounds its own reads and writes.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		s.m.upgrades.WithLabelValues("bad_request").Inc()
		return
	}
	s.m.upgrades.WithLabelValues("ok").Inc()
	conn.SetReadLimit(int64(max(s.cfg.MaxBinary, maxText)) + 1)
	sess := newSession(s, n, conn, tenant, id, org, r.Header.Get(hdrCorrelation))
	sess.run()
}

func remoteIP(remote string) netip.Addr {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr()
}
