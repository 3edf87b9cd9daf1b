// Package sip is callrouter's SIP ingest: a user agent server on sipgo that answers INVITEs over
// UDP and TCP with an SDP answer (G.711 μ-law and A-law, G.722, RFC 4733 telephone-events),
// receives RTP with pion/rtp on a port range, re-cuts it into 20 ms frames with loss, reordering
// and silence handled, and feeds them to an ingest.Call. SIPREC (RFC 7866) INVITEs become one
// call with one named leg per recorded participant. DTMF digits are published as call events.
// Server implements ingest.Source; docs/sip.md describes its behaviour and configuration.
package sip

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callrouter/callrouter/internal/drain"
	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Deps are the server's collaborators.
type Deps struct {
	Log      zerolog.Logger
	Registry prometheus.Registerer
}

// Server is the SIP user agent server. New builds it; Run serves.
type Server struct {
	cfg       Config
	log       zerolog.Logger
	secLog    zerolog.Logger // refusals of forged or misdirected requests, sampled
	m         *metrics
	pol       *policy
	lim       *sourceLimits
	auth      *digestAuth
	gate      *gate
	ports     *portPool
	shared    *sharedRTP // the shared RTP port (Config.RTPShared) while Run runs, else nil
	codecs    []codec
	listenIP  netip.Addr
	advertise netip.Addr

	ready   chan struct{}
	addr    atomic.Pointer[netip.AddrPort]
	tlsAddr atomic.Pointer[netip.AddrPort]

	node     *ingest.Node
	ctx      context.Context
	client   *sipgo.Client
	dialogs  map[string]*sipgo.DialogServerCache // by transport
	contacts map[string]sip.ContactHeader

	mu       sync.Mutex
	calls    map[string]*callState // by dialog id
	registry *drain.Sessions       // a slot per call in calls; draining once Run's context ended
	wg       sync.WaitGroup        // call goroutines and in-flight request handlers
	running  atomic.Bool

	answerHook  func(time.Duration)                // tests: every INVITE → 200 OK time
	handlerHook atomic.Pointer[func(*sip.Request)] // tests: runs before every request handler
	packetHook  atomic.Pointer[func([]byte)]       // tests: runs on every RTP packet of calls placed after it is set
}

// New validates cfg and builds a server; it does no I/O.
func New(cfg Config, d Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if d.Registry == nil {
		d.Registry = prometheus.NewRegistry()
	}
	lis := netip.MustParseAddrPort(cfg.Listen)
	s := &Server{cfg: cfg, log: d.Log.With().Str("source", "sip").Logger(), m: newMetrics(d.Registry), pol: newPolicy(&cfg), lim: newSourceLimits(&cfg),
		listenIP: lis.Addr(), advertise: lis.Addr(), ready: make(chan struct{}), calls: map[string]*callState{},
		registry: drain.New(cfg.MaxCalls, 0, nil)}
	if cfg.AdvertiseIP != "" {
		s.advertise = netip.MustParseAddr(cfg.AdvertiseIP)
	}
	mediaIP := lis.Addr()
	if cfg.MediaIP != "" {
		mediaIP = netip.MustParseAddr(cfg.MediaIP)
	}
	lo := cfg.RTPPortMin
	if cfg.RTPShared {
		lo = sharedPort(cfg) + 2 // the rest of the range for legs that declare no source
	}
	s.ports = newPortPool(mediaIP, lo, cfg.RTPPortMax, cfg.PortQuarantine)
	for _, name := range cfg.Codecs {
		s.codecs = append(s.codecs, codecByName[name])
	}
	if len(cfg.AuthUsers) > 0 {
		s.auth = newDigestAuth(cfg.AuthRealm, cfg.AuthUsers)
	}
	s.secLog = s.log.Sample(&zerolog.BurstSampler{Burst: 10, Period: time.Second})
	s.gate = &gate{pol: s.pol, hops: newInviteHops(), mode: cfg.DialogCheck, m: s.m}
	return s, nil
}

// sharedPort is the shared RTP port: the lowest even port of the range.
func sharedPort(cfg Config) int { return cfg.RTPPortMin + cfg.RTPPortMin%2 }

// Ready is closed once the server listens; Addr is valid from then on.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr returns the SIP address the server listens on (UDP and TCP share the port).
func (s *Server) Addr() netip.AddrPort {
	if a := s.addr.Load(); a != nil {
		return *a
	}
	return netip.AddrPort{}
}

// TLSAddr returns the SIP over TLS address the server listens on (zero without TLS).
func (s *Server) TLSAddr() netip.AddrPort {
	if a := s.tlsAddr.Load(); a != nil {
		return *a
	}
	return netip.AddrPort{}
}

// dialogKey names the dialog cache (and Contact) for a request: its transport, and for TLS
// whether the request-URI is sips (the Contact of a sips dialog must be a sips URI, RFC 3261
// section 12.1.1).
func dialogKey(req *sip.Request) string {
	if t := req.Transport(); t != "TLS" || req.Recipient.Scheme != "sips" {
		return t
	}
	return "TLS-sips"
}

// Calls returns the number of calls in progress.
func (s *Server) Calls() int { return s.registry.Live() }

// listen opens the UDP and TCP listeners on one port.
func (s *Server) listen() (net.PacketConn, net.Listener, error) {
	want := netip.MustParseAddrPort(s.cfg.Listen)
	udp, tcp := false, false
	for _, t := range s.cfg.Transports {
		udp, tcp = udp || t == "udp", tcp || t == "tcp"
	}
	for attempt := 0; attempt < 20; attempt++ {
		addr := want
		var pc net.PacketConn
		var err error
		if udp {
			if pc, err = net.ListenPacket("udp", addr.String()); err != nil {
				return nil, nil, err
			}
			addr = netip.MustParseAddrPort(pc.LocalAddr().String())
		}
		if !tcp {
			return pc, nil, nil
		}
		l, err := net.Listen("tcp", addr.String())
		if err == nil {
			return pc, l, nil
		}
		if pc != nil {
			_ = pc.Close()
		}
		if want.Port() != 0 {
			return nil, nil, err
		}
	}
	return nil, nil, errors.New("sip: no port free for both UDP and TCP")
}

// listeners are the server's sockets: UDP and TCP on one port (either may be off), and TLS.
type listeners struct {
	pc   net.PacketConn
	tcp  net.Listener
	tls  net.Listener
	tlsc *tls.Config // the server side of TLS
}

// close closes every socket that is open.
func (ls *listeners) close() {
	if ls.pc != nil {
		_ = ls.pc.Close()
	}
	if ls.tcp != nil {
		_ = ls.tcp.Close()
	}
	if ls.tls != nil {
		_ = ls.tls.Close()
	}
}

// local is the UDP (else TCP) address.
func (ls *listeners) local() netip.AddrPort {
	if ls.pc != nil {
		return netip.MustParseAddrPort(ls.pc.LocalAddr().String())
	}
	return netip.MustParseAddrPort(ls.tcp.Addr().String())
}

// Run serves SIP until ctx ends, then drains: new INVITEs get 503, calls get DrainTimeout to
// hang up, and the rest are hung up with BYE. It returns once every goroutine it started has
// exited.
func (s *Server) Run(ctx context.Context, n *ingest.Node) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("sip: server already ran")
	}
	s.node = n
	ls, tlsClient, err := s.openListeners()
	if err != nil {
		return err
	}
	if s.cfg.RTPShared {
		if s.shared, err = openSharedRTP(s.ports.ip, sharedPort(s.cfg), runtime.GOMAXPROCS(0), s.m); err != nil {
			ls.close()
			return fmt.Errorf("sip: shared RTP port (-sip-rtp-shared) %d: %w", sharedPort(s.cfg), err)
		}
		defer s.shared.close()
		if s.shared.rcvbuf < sharedRcvBuf {
			s.log.Warn().Int("bytes", s.shared.rcvbuf).Int("want", sharedRcvBuf).
				Msg("the shared RTP port's sockets got a small receive buffer: raise net.core.rmem_max, or grant CAP_NET_ADMIN, or packets may be dropped at bursts")
		}
	}
	local := ls.local()
	if s.advertise.IsUnspecified() {
		s.advertise = netip.MustParseAddr("127.0.0.1")
	}
	ua, srv, err := s.newUA(tlsClient)
	if err != nil {
		ls.close()
		return err
	}
	s.makeDialogs(local, ls.tls)
	runCtx, cancelRun := context.WithCancel(context.Background())
	defer cancelRun()
	s.ctx = runCtx
	s.route(srv)
	var serveWG sync.WaitGroup
	s.serve(srv, ls, &serveWG)
	stopWatch := make(chan struct{})
	var watchWG sync.WaitGroup
	watchWG.Go(func() { s.watchCalls(stopWatch) })
	s.addr.Store(&local)
	close(s.ready)
	s.log.Info().Str("addr", local.String()).Strs("transports", s.cfg.Transports).Msg("SIP listening")

	<-ctx.Done()
	s.drainCalls()
	cancelRun()
	ls.close()
	_ = ua.Close()
	serveWG.Wait()
	s.wg.Wait()
	close(stopWatch)
	watchWG.Wait()
	return nil
}

// openListeners opens the UDP/TCP port and, when configured, the TLS listener; it returns the
// client side of TLS too (for requests callrouter sends, BYE).
func (s *Server) openListeners() (*listeners, *tls.Config, error) {
	ls := &listeners{}
	var tlsClient *tls.Config
	if s.cfg.TLSListen != "" {
		var err error
		if ls.tlsc, tlsClient, err = tlsConfigs(&s.cfg); err != nil {
			return nil, nil, err
		}
	}
	var err error
	if ls.pc, ls.tcp, err = s.listen(); err != nil {
		return nil, nil, fmt.Errorf("sip: listen: %w", err)
	}
	if ls.tlsc != nil {
		if ls.tls, err = net.Listen("tcp", s.cfg.TLSListen); err != nil {
			ls.close()
			return nil, nil, fmt.Errorf("sip: listen TLS: %w", err)
		}
	}
	return ls, tlsClient, nil
}

// newUA builds the sipgo user agent, server and client (s.client), logging through s.log.
func (s *Server) newUA(tlsClient *tls.Config) (*sipgo.UserAgent, *sipgo.Server, error) {
	slogger := newSlog(s.log)
	ua, err := sipgo.NewUA(sipgo.WithUserAgent("callrouter"), sipgo.WithUserAgentHostname(s.advertise.String()), sipgo.WithUserAgenTLSConfig(tlsClient),
		sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerLogger(slogger),
			sip.WithTransactionLayerUnhandledResponseHandler(func(*sip.Response) { s.m.strayResponses.Inc() })),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(slogger)))
	if err != nil {
		return nil, nil, err
	}
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(slogger))
	if err != nil {
		_ = ua.Close()
		return nil, nil, err
	}
	s.client, err = sipgo.NewClient(ua, sipgo.WithClientHostname(s.advertise.String()), sipgo.WithClientLogger(slogger))
	if err != nil {
		_ = ua.Close()
		return nil, nil, err
	}
	return ua, srv, nil
}

// makeDialogs builds the dialog cache and Contact of each transport (dialogKey): UDP and TCP on
// local's port, TLS and TLS-sips on tl's when TLS is on.
func (s *Server) makeDialogs(local netip.AddrPort, tl net.Listener) {
	s.dialogs = map[string]*sipgo.DialogServerCache{}
	s.contacts = map[string]sip.ContactHeader{}
	for _, t := range []string{"UDP", "TCP", "TLS", "TLS-sips"} {
		port := int(local.Port())
		if strings.HasPrefix(t, "TLS") {
			if tl == nil {
				continue
			}
			port = tl.Addr().(*net.TCPAddr).Port
		}
		contact := sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "callrouter", Host: s.advertise.String(), Port: port,
			UriParams: sip.NewParams()}}
		switch t {
		case "TCP":
			contact.Address.UriParams.Add("transport", "tcp")
		case "TLS":
			contact.Address.UriParams.Add("transport", "tls")
		case "TLS-sips":
			contact.Address.Scheme = "sips"
		}
		s.dialogs[t] = sipgo.NewDialogServerCache(s.client, contact)
		s.contacts[t] = contact
	}
}

// route registers the request handlers.
func (s *Server) route(srv *sipgo.Server) {
	srv.OnInvite(s.handle(s.onInvite))
	srv.OnAck(s.handle(s.onAck))
	srv.OnBye(s.handle(s.onBye))
	srv.OnCancel(s.handle(s.onCancel))
	srv.OnOptions(s.handle(s.onOptions))
	srv.OnUpdate(s.handle(s.onUpdate))
	srv.OnInfo(s.handle(s.onInfo))
	srv.OnNoRoute(s.handle(s.onNoRoute))
}

// serve starts a goroutine serving each listener behind its transport guard; wg waits for them.
func (s *Server) serve(srv *sipgo.Server, ls *listeners, wg *sync.WaitGroup) {
	if ls.pc != nil {
		wg.Add(1)
		g := &guardConn{PacketConn: ls.pc, parser: sip.NewParser(), m: s.m, lim: s.lim, gate: s.gate}
		go func() { defer wg.Done(); _ = srv.ServeUDP(g) }()
	}
	if ls.tcp != nil {
		wg.Add(1)
		gl := &guardListener{Listener: ls.tcp, transport: "TCP", gate: s.gate, m: s.m, lim: s.lim, idle: s.cfg.TCPIdleTimeout,
			message: s.cfg.TCPMessageTimeout}
		go func() { defer wg.Done(); _ = srv.ServeTCP(gl) }()
	}
	if ls.tls != nil {
		wg.Add(1)
		gl := &guardListener{Listener: tls.NewListener(ls.tls, ls.tlsc), transport: "TLS", gate: s.gate, m: s.m, lim: s.lim,
			idle: s.cfg.TCPIdleTimeout, message: s.cfg.TCPMessageTimeout}
		go func() { defer wg.Done(); _ = srv.ServeTLS(gl) }()
		ta := netip.MustParseAddrPort(ls.tls.Addr().String())
		s.tlsAddr.Store(&ta)
		s.log.Info().Str("addr", ta.String()).Bool("client_certs", s.cfg.TLSClientCA != "").Msg("SIP over TLS listening")
	}
}

// drainCalls refuses new INVITEs, gives the calls DrainTimeout to hang up, and hangs up the rest
// with BYE, waiting for them.
func (s *Server) drainCalls() {
	s.registry.Drain(s.cfg.DrainTimeout)
	s.mu.Lock()
	rest := make([]*callState, 0, len(s.calls))
	for _, c := range s.calls {
		rest = append(rest, c)
	}
	s.mu.Unlock()
	var fin sync.WaitGroup
	for _, c := range rest {
		fin.Add(1)
		go func() {
			defer fin.Done()
			c.finish("shutdown", true)
		}()
	}
	fin.Wait()
}

// handle wraps a request handler so that Run waits for it, and so that a panic in one request
// never takes the process (and the other calls) down: the request gets 500 and the panic is
// counted (callrouter_panics_total{where="sip_handler"}).
func (s *Server) handle(h func(*sip.Request, sip.ServerTransaction)) sipgo.RequestHandler {
	return func(req *sip.Request, tx sip.ServerTransaction) {
		s.wg.Add(1)
		defer s.wg.Done()
		defer guard.Recover("sip_handler", s.log.With().Str("method", methodLabel(req.Method)).Logger(), func(any) {
			s.respond(req, tx, 500, "Server Internal Error")
		})
		if !s.precheck(req, tx) {
			return
		}
		if hook := s.handlerHook.Load(); hook != nil {
			(*hook)(req)
		}
		h(req, tx)
	}
}

// respond sends a final response built from req with optional extra headers.
func (s *Server) respond(req *sip.Request, tx sip.ServerTransaction, code int, reason string, hdrs ...sip.Header) {
	res := sip.NewResponseFromRequest(req, code, reason, nil)
	res.SipVersion = "SIP/2.0" // a request of another version still gets a SIP/2.0 answer
	for _, h := range hdrs {
		res.AppendHeader(h)
	}
	s.m.requests.WithLabelValues(methodLabel(req.Method), strconv.Itoa(code)).Inc()
	if tx != nil {
		_ = tx.Respond(res)
		sendOnce(req, tx, code)
	}
}

// sendOnce ends the server transaction of a rejected INVITE that came over UDP right after its
// final response went out, so the response is sent once and never retransmitted (RFC 3261 timer
// G would resend it for 32 s, waiting for an ACK). A UDP source address is spoofable: answering
// one forged INVITE with ten rejections would make callrouter a reflector. A real client that
// lost the rejection retransmits its INVITE (timer A) and gets it again, one for one; a client
// that had a 100 Trying first gives up at its timer B.
func sendOnce(req *sip.Request, tx sip.ServerTransaction, code int) {
	if code >= 300 && req.IsInvite() && req.Transport() == "UDP" && tx != nil {
		tx.Terminate()
	}
}

func (s *Server) onAck(req *sip.Request, tx sip.ServerTransaction) {
	if d := s.dialogs[dialogKey(req)]; d != nil {
		_ = d.ReadAck(req, tx)
	}
}

func (s *Server) findCall(req *sip.Request) *callState {
	id, err := sip.DialogIDFromRequestUAS(req)
	if err != nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[id]
}

func (s *Server) onBye(req *sip.Request, tx sip.ServerTransaction) {
	c := s.findCall(req)
	if c == nil {
		s.respond(req, tx, 481, "Call/Transaction Does Not Exist")
		return
	}
	if !s.checkDialog(req, tx, c) {
		return
	}
	if err := c.dlg.ReadBye(req, tx); err != nil {
		s.respond(req, tx, 400, "Bad Request")
		return
	}
	s.m.requests.WithLabelValues("BYE", "200").Inc()
	c.finish("hangup", false)
}

// onCancel sees only CANCELs that match no INVITE transaction (sipgo answers the others itself).
func (s *Server) onCancel(req *sip.Request, tx sip.ServerTransaction) {
	s.respond(req, tx, 481, "Call/Transaction Does Not Exist")
}

func (s *Server) allowHeaders() []sip.Header {
	return []sip.Header{sip.NewHeader("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO"),
		sip.NewHeader("Accept", "application/sdp, multipart/mixed"), sip.NewHeader("Supported", "timer")}
}

// onOptions answers OPTIONS (the transport guards have applied the allow-list).
func (s *Server) onOptions(req *sip.Request, tx sip.ServerTransaction) {
	s.respond(req, tx, 200, "OK", s.allowHeaders()...)
}

// onUpdate refreshes the session timer (RFC 4028); offers in UPDATE are not renegotiated.
func (s *Server) onUpdate(req *sip.Request, tx sip.ServerTransaction) {
	c := s.findCall(req)
	if c == nil {
		s.respond(req, tx, 481, "Call/Transaction Does Not Exist")
		return
	}
	if !s.checkDialog(req, tx, c) {
		return
	}
	c.refresh(req)
	s.respond(req, tx, 200, "OK", c.timerHeaders()...)
}

// onNoRoute answers methods callrouter knows but does not serve (REGISTER, MESSAGE, ...).
func (s *Server) onNoRoute(req *sip.Request, tx sip.ServerTransaction) {
	if req.Method == sip.ACK {
		return
	}
	s.respond(req, tx, 405, "Method Not Allowed", s.allowHeaders()[0])
}
