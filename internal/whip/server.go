// Package whip is callrouter's WebRTC ingest: a WHIP endpoint (RFC 9725) that ingest mounts on
// its HTTP server. A POST with an SDP offer places a call and answers 201 with the SDP answer and
// an unguessable session URL; DELETE on that URL ends the call. Media is audio only (Opus, PCMU or
// PCMA) with no PeerConnection: one UDP port and one read loop for every session answer ICE as
// an ICE-lite agent (pion/stun), run each session's DTLS server (pion/dtls, one certificate for
// all) and decrypt its SRTP (pion/srtp) into the cutter (rx.go). Each session's RTP is put back
// in order with a small reorder window and cut into 20 ms frames on the call's subjects; lost
// media becomes gap-filled frames, and silence the sender suppressed (DTX) becomes codec silence.
// The package also streams a call's events to the browser call page (package web) as
// Server-Sent Events.
package whip

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/callrouter/callrouter/internal/drain"
	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/pion/dtls/v3/pkg/crypto/selfsign"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Deps are the server's collaborators.
type Deps struct {
	Log      zerolog.Logger
	Registry prometheus.Registerer
}

// Server is the WHIP endpoint. It is an http.Handler (mount it at Config.Path and below, or use
// Mount) and an ingest.Source: Run binds the UDP port and serves until its context ends.
type Server struct {
	cfg  Config
	log  zerolog.Logger
	m    *metrics
	auth *authenticator
	post *guard.SourceRate

	node    atomic.Pointer[ingest.Node] // set while Run serves
	ready   chan struct{}
	stop    chan struct{} // closed when Run begins shutting down
	started atomic.Bool

	udp         *net.UDPConn // the one socket of every session's ICE, DTLS and SRTP
	cert        tls.Certificate
	fingerprint string           // of cert, in every answer
	candidates  []netip.AddrPort // in every answer
	readDone    chan struct{}    // closed when the read loop has returned
	rmu         sync.RWMutex
	byUfrag     map[string]*session         // by local ICE ufrag (rmu)
	byAddr      map[netip.AddrPort]*session // by checked peer address (rmu)

	live     *drain.Sessions // a slot per session being set up or running; draining once Run's context ended
	mu       sync.Mutex
	closing  bool                // Run is shutting down: no new goroutines, no new sessions
	sessions map[string]*session // by URL id, including ended ones that linger
	wg       sync.WaitGroup
	watching watchers // watch streams (watch.go)

	handlerHook atomic.Pointer[func(*http.Request)]           // tests: runs before every request is served
	packetHook  atomic.Pointer[func(call string, raw []byte)] // tests: runs on every RTP packet a track reads
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
	s := &Server{cfg: cfg, log: d.Log.With().Str("source", "whip").Logger(),
		auth: newAuthenticator(cfg.Tokens, cfg.OpenTenant), post: guard.NewSourceRate(cfg.PostRate, cfg.PostBurst), ready: make(chan struct{}), stop: make(chan struct{}),
		sessions: map[string]*session{}, byUfrag: map[string]*session{}, byAddr: map[netip.AddrPort]*session{}, readDone: make(chan struct{}), live: drain.New(cfg.MaxSessions, cfg.MaxSessionsPerTenant, nil)}
	s.m = newMetrics(d.Registry, s.countState)
	return s, nil
}

// countState returns the number of known sessions in a state.
func (s *Server) countState(state string) int {
	n := 0
	for _, sess := range s.allSessions() {
		if sess.currentState() == state {
			n++
		}
	}
	return n
}

// Ready is closed once Run has bound the UDP port and takes calls.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// UDPAddr returns the bound media address (after Ready).
func (s *Server) UDPAddr() net.Addr {
	if s.udp == nil {
		return nil
	}
	return s.udp.LocalAddr()
}

// Run binds the UDP port and takes calls into n until ctx ends. Then it drains: new sessions get
// 503 while the ones up have the drain timeout to end; it ends the rest (reason "shutdown") and
// returns once all of its goroutines have exited.
func (s *Server) Run(ctx context.Context, n *ingest.Node) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("whip: Run called twice")
	}
	if err := s.listen(); err != nil {
		return err
	}
	go s.readLoop()
	s.node.Store(n)
	close(s.ready)
	s.log.Info().Str("udp", s.udp.LocalAddr().String()).Strs("public_ips", s.cfg.PublicIPs).Msg("whip endpoint serving")
	<-ctx.Done()
	s.drain()
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	close(s.stop)
	s.node.Store(nil)
	for _, sess := range s.allSessions() {
		sess.end("shutdown")
	}
	s.wg.Wait()
	for _, sess := range s.allSessions() {
		s.forget(sess)
	}
	err := s.udp.Close()
	<-s.readDone
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// drain refuses new sessions and waits, up to the drain timeout, for the ones up to end.
func (s *Server) drain() {
	n := s.live.Live()
	if n == 0 || s.cfg.DrainTimeout <= 0 {
		s.live.Drain(0)
		return
	}
	s.log.Info().Int("sessions", n).Dur("timeout", s.cfg.DrainTimeout).Msg("whip draining")
	if n := s.live.Drain(s.cfg.DrainTimeout); n > 0 {
		s.log.Info().Int("sessions", n).Msg("drain timeout: ending the sessions still up")
	}
}

// rcvBuf is the shared socket's receive buffer: every session's packets queue there while the
// one read loop is descheduled (a busy host), so it is far more than one socket's default.
const rcvBuf = 8 << 20

func (s *Server) listen() error {
	cert, err := selfsign.GenerateSelfSigned() // ECDSA P-256
	if err != nil {
		return err
	}
	fp, err := serverCert(cert)
	if err != nil {
		return err
	}
	pc, err := net.ListenPacket("udp", s.cfg.UDPAddr)
	if err != nil {
		return err
	}
	udp := pc.(*net.UDPConn)
	setRcvBuf(udp, rcvBuf)
	cands, err := hostCandidates(udp.LocalAddr().(*net.UDPAddr).AddrPort(), s.cfg.PublicIPs)
	if err != nil {
		_ = udp.Close()
		return err
	}
	s.udp, s.cert, s.fingerprint, s.candidates = udp, cert, fp, cands
	return nil
}

// acquire takes a session slot for tenant, or says why there is none.
func (s *Server) acquire(tenant string) (ok bool, why string) {
	switch err := s.live.Acquire(tenant); {
	case errors.Is(err, drain.ErrDraining): // set before closing
		return false, "draining: this node takes no new sessions"
	case err != nil:
		return false, "too many sessions"
	}
	return true, ""
}

func (s *Server) releaseSlot(tenant string) { s.live.Release(tenant) }

// add registers a session; false once the server is shutting down.
func (s *Server) add(sess *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.sessions[sess.id] = sess
	return true
}

// spawn runs f on a goroutine that Run waits for; false (f not run) once Run is shutting down,
// after which Run itself ends every session and forgets it.
func (s *Server) spawn(f func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
	return true
}

func (s *Server) lookup(id string) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions[id]
}

func (s *Server) allSessions() []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*session, 0, len(s.sessions))
	for _, sess := range s.sessions {
		out = append(out, sess)
	}
	return out
}

// forget removes an ended session: its URL stops answering and its event stream closes.
func (s *Server) forget(sess *session) {
	s.mu.Lock()
	if s.sessions[sess.id] == sess {
		delete(s.sessions, sess.id)
	}
	s.mu.Unlock()
	sess.forget()
}

// Sessions returns the number of sessions holding a slot (being set up or running).
func (s *Server) Sessions() int { return s.live.Live() }
