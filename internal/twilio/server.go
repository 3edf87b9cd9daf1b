// Package twilio is callrouter's Twilio Media Streams ingest: a WebSocket server that a TwiML
// <Start><Stream> (unidirectional) or <Connect><Stream> (bidirectional) points at. Twilio sends
// JSON text messages: connected, start (the call's tracks and custom parameters; the "token"
// parameter names the tenant), media (base64 μ-law 8 kHz, 20 ms chunks, numbered and time-stamped
// since the stream's start), dtmf, mark and stop. Tracks become legs (inbound → caller,
// outbound → agent); media is put back in order by timestamp within a short window and cut into
// 20 ms frames on the call's timeline by timeline.Cutter; digits become "dtmf" events.
package twilio

import (
	"context"
	"crypto/sha256"
	"errors"
	"net/http"
	"net/netip"
	"strconv"
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

// Server is the Media Streams endpoint: an http.Handler (Mount it) and an ingest.Source (Run it).
type Server struct {
	cfg    Config
	log    zerolog.Logger
	m      *metrics
	tokens map[[sha256.Size]byte]string
	rate   *guard.SourceRate

	node    atomic.Pointer[ingest.Node]
	ready   chan struct{}
	stop    chan struct{}
	started atomic.Bool
	// live holds a slot per stream until its goroutine returns, counted against its tenant from
	// start (the upgrade carries no credential).
	live *drain.Sessions
}

var _ ingest.Source = (*Server)(nil)

// New validates cfg and builds a server; it does no I/O. Load a token file first with
// cfg.LoadTokens.
func New(cfg Config, d Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if d.Registry == nil {
		d.Registry = prometheus.NewRegistry()
	}
	m := newMetrics(d.Registry)
	s := &Server{cfg: cfg, log: d.Log.With().Str("source", "twilio").Logger(), m: m,
		tokens: map[[sha256.Size]byte]string{}, rate: guard.NewSourceRate(cfg.UpgradeRate, cfg.UpgradeBurst), ready: make(chan struct{}), stop: make(chan struct{}),
		live: drain.New(cfg.MaxSessions, cfg.MaxSessionsPerTenant, func(n int) { m.sessions.Set(float64(n)) })}
	for tok, tenant := range cfg.Tokens {
		s.tokens[sha256.Sum256([]byte(tok))] = tenant
	}
	return s, nil
}

// Mount serves the endpoint at Config.Path on mux.
func (s *Server) Mount(mux *http.ServeMux) { mux.Handle(s.cfg.Path, s) }

// Ready is closed once Run takes streams.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Sessions returns the streams holding a slot.
func (s *Server) Sessions() int { return s.live.Live() }

// Run takes streams into n until ctx ends, then drains: upgrades get 503 while the streams up
// have the drain timeout; the rest are closed (1001) and Run returns once every one has ended.
func (s *Server) Run(ctx context.Context, n *ingest.Node) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("twilio: Run called twice")
	}
	s.node.Store(n)
	close(s.ready)
	s.log.Info().Str("path", s.cfg.Path).Int("tokens", len(s.tokens)).Msg("twilio media streams endpoint serving")
	<-ctx.Done()
	if k := s.live.Live(); k > 0 && s.cfg.DrainTimeout > 0 {
		s.log.Info().Int("streams", k).Dur("timeout", s.cfg.DrainTimeout).Msg("twilio draining")
	}
	s.live.Drain(s.cfg.DrainTimeout)
	close(s.stop)
	s.live.Wait()
	s.node.Store(nil)
	return nil
}

// tenantOf returns the tenant of a token.
func (s *Server) tenantOf(token string) (string, bool) {
	t, ok := s.tokens[sha256.Sum256([]byte(token))]
	return t, ok
}

// ServeHTTP takes a slot and runs the stream on the request's goroutine until it ends.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		s.m.upgrades.WithLabelValues("bad_request").Inc()
		http.Error(w, "Media Streams: WebSocket upgrade (GET) only", http.StatusMethodNotAllowed)
		return
	}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil && !s.rate.Allow(ap.Addr(), time.Now()) {
		s.m.upgrades.WithLabelValues("rate_limited").Inc()
		w.Header().Set("Retry-After", "1")
		http.Error(w, "Media Streams: too many requests from this address", http.StatusTooManyRequests)
		return
	}
	n := s.node.Load()
	if n == nil || s.live.Acquire("") != nil {
		s.m.upgrades.WithLabelValues("unavailable").Inc()
		w.Header().Set("Retry-After", strconv.Itoa(int(s.cfg.RetryAfter/time.Second)))
		http.Error(w, "Media Streams: this node takes no new streams", http.StatusServiceUnavailable)
		return
	}
	st := &stream{s: s, n: n, log: s.log}
	defer func() { s.live.Release(st.tenant) }()
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		s.m.upgrades.WithLabelValues("bad_request").Inc()
		return
	}
	s.m.upgrades.WithLabelValues("ok").Inc()
	conn.SetReadLimit(maxMessage)
	st.conn = conn
	st.run()
}
