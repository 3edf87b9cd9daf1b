// Package obs gives every callrouter binary the same operational surface: a zerolog JSON logger,
// and an HTTP server with /healthz, /readyz and /metrics (Prometheus).
package obs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"golang.org/x/net/netutil"
)

// Logger returns a JSON logger at the given level ("debug", "info", "warn", "error").
func Logger(w io.Writer, level, component, id string) (zerolog.Logger, error) {
	lv, err := zerolog.ParseLevel(level)
	if err != nil {
		return zerolog.Nop(), err
	}
	zerolog.TimeFieldFormat = time.RFC3339Nano
	return zerolog.New(w).Level(lv).With().Timestamp().Str("component", component).Str("id", id).Logger(), nil
}

// Health holds the liveness and readiness served by Server: a flag each, set by the component,
// and checks added by whoever runs it (the NATS connection for readiness, the component's own
// heartbeat loop for liveness). /healthz and /readyz answer 200 when the flag is set and every
// check passes.
type Health struct {
	live  atomic.Bool
	ready atomic.Bool

	mu          sync.Mutex
	liveChecks  []check
	readyChecks []check
}

type check struct {
	name string
	f    func() error
}

// SetLive sets the liveness flag.
func (h *Health) SetLive(v bool) { h.live.Store(v) }

// SetReady sets the readiness flag.
func (h *Health) SetReady(v bool) { h.ready.Store(v) }

// Ready reports the component's own readiness flag, without the checks: whether it would take
// work (a worker announces it in its heartbeat).
func (h *Health) Ready() bool { return h.ready.Load() }

// AddLiveCheck adds a condition of /healthz; f returns nil when it holds.
func (h *Health) AddLiveCheck(name string, f func() error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.liveChecks = append(h.liveChecks, check{name, f})
}

// AddReadyCheck adds a condition of /readyz; f returns nil when it holds.
func (h *Health) AddReadyCheck(name string, f func() error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.readyChecks = append(h.readyChecks, check{name, f})
}

// LiveErr is the /healthz answer: nil, or why not.
func (h *Health) LiveErr() error { return h.eval(&h.live, "live", &h.liveChecks) }

// ReadyErr is the /readyz answer: nil, or why not.
func (h *Health) ReadyErr() error { return h.eval(&h.ready, "ready", &h.readyChecks) }

func (h *Health) eval(flag *atomic.Bool, what string, checks *[]check) error {
	if !flag.Load() {
		return errors.New("not " + what)
	}
	h.mu.Lock()
	cs := *checks
	h.mu.Unlock()
	for _, c := range cs {
		if err := c.f(); err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
	}
	return nil
}

// NewRegistry returns a registry with the Go and process collectors.
func NewRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Server serves /healthz, /readyz and /metrics, plus any extra handlers (Listen), or one
// handler alone (ListenHandler).
type Server struct {
	ln  net.Listener
	srv *http.Server
	tls bool
	Mux *http.ServeMux // nil from ListenHandler
}

// Paths returns the paths every binary serves on its -http address: liveness, readiness and
// Prometheus metrics, in that order.
func Paths() []string { return []string{"/healthz", "/readyz", "/metrics"} }

// NewMux returns a mux serving Paths: /healthz and /readyz answer 200 or 503 from h, /metrics
// serves reg.
func NewMux(h *Health, reg *prometheus.Registry) *http.ServeMux {
	p := Paths()
	mux := http.NewServeMux()
	mux.HandleFunc(p[0], func(w http.ResponseWriter, _ *http.Request) { answer(w, h.LiveErr()) })
	mux.HandleFunc(p[1], func(w http.ResponseWriter, _ *http.Request) { answer(w, h.ReadyErr()) })
	mux.Handle(p[2], promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return mux
}

// Limits bound what HTTP clients can hold of a server: a slow or silent client is cut off by the
// timeouts, and past MaxConns open connections new ones wait in the listen backlog until one
// closes. Handlers that stream (Server-Sent Events) lift the read and write deadlines of their own
// request with http.ResponseController.
type Limits struct {
	// ReadHeaderTimeout bounds reading a request's headers; ReadTimeout the whole request, body
	// included.
	ReadHeaderTimeout, ReadTimeout time.Duration
	// WriteTimeout bounds a request from the end of its headers to the end of its response (a
	// WHIP POST's placement included).
	WriteTimeout time.Duration
	// IdleTimeout closes a keep-alive connection that sends no next request.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request's header section.
	MaxHeaderBytes int
	// MaxConns bounds open connections (0: no bound); MaxConnsPerSource bounds those from one
	// client address, so one client cannot take every slot (a connection past it is closed at
	// once; 0: no bound). Behind a proxy every client shares the proxy's address.
	MaxConns          int
	MaxConnsPerSource int
}

// Check reports a bound that cannot be meant, naming its flag.
func (l Limits) Check() error { return l.CheckFlags("http") }

// CheckFlags is Check for limits set by flags named -<prefix>-max-conns, -<prefix>-max-conns-per-source
// and -<prefix>-{read-header,read,write,idle}-timeout.
func (l Limits) CheckFlags(prefix string) error {
	if l.MaxConns < 0 {
		return fmt.Errorf("flag -%s-max-conns: %d must not be negative (0: no bound)", prefix, l.MaxConns)
	}
	if l.MaxConnsPerSource < 0 {
		return fmt.Errorf("flag -%s-max-conns-per-source: %d must not be negative (0: no bound)", prefix, l.MaxConnsPerSource)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"read-header-timeout", l.ReadHeaderTimeout}, {"read-timeout", l.ReadTimeout}, {"write-timeout", l.WriteTimeout}, {"idle-timeout", l.IdleTimeout}} {
		if d.v < 0 {
			return fmt.Errorf("flag -%s-%s: %v must not be negative (0: no bound)", prefix, d.name, d.v)
		}
	}
	return nil
}

// DefaultLimits returns the limits Listen applies.
func DefaultLimits() Limits {
	return Limits{ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 60 * time.Second,
		IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10, MaxConns: 4096, MaxConnsPerSource: 1024}
}

// Listen binds addr (":0" picks a port) with DefaultLimits and prepares the handlers; Serve
// starts them.
func Listen(addr string, h *Health, reg *prometheus.Registry) (*Server, error) {
	return ListenLimits(addr, h, reg, DefaultLimits())
}

// ListenLimits is Listen with the given limits.
func ListenLimits(addr string, h *Health, reg *prometheus.Registry, l Limits) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	if l.MaxConnsPerSource > 0 {
		ln = &sourceListener{Listener: ln, max: l.MaxConnsPerSource, open: map[string]int{}}
	}
	if l.MaxConns > 0 {
		ln = netutil.LimitListener(ln, l.MaxConns)
	}
	mux := NewMux(h, reg)
	return &Server{ln: ln, Mux: mux, srv: &http.Server{Handler: mux, ReadHeaderTimeout: l.ReadHeaderTimeout, ReadTimeout: l.ReadTimeout,
		WriteTimeout: l.WriteTimeout, IdleTimeout: l.IdleTimeout, MaxHeaderBytes: l.MaxHeaderBytes}}, nil
}

// sourceListener closes a new connection at once when its client address already holds max.
type sourceListener struct {
	net.Listener
	max  int
	mu   sync.Mutex
	open map[string]int // by client IP
}

func (l *sourceListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		l.mu.Lock()
		full := l.open[ip] >= l.max
		if !full {
			l.open[ip]++
		}
		l.mu.Unlock()
		if full {
			_ = c.Close()
			continue
		}
		return &sourceConn{Conn: c, l: l, ip: ip}, nil
	}
}

type sourceConn struct {
	net.Conn
	l    *sourceListener
	ip   string
	once sync.Once
}

func (c *sourceConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		if c.l.open[c.ip]--; c.l.open[c.ip] <= 0 {
			delete(c.l.open, c.ip)
		}
		c.l.mu.Unlock()
	})
	return err
}

func answer(w http.ResponseWriter, err error) {
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("not ok: " + err.Error() + "\n"))
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}

// Addr returns the bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Run serves until ctx ends, then shuts down with a fresh 5 s deadline.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() {
		if s.tls {
			errc <- s.srv.ServeTLS(s.ln, "", "") // the certificate comes from TLSConfig
			return
		}
		errc <- s.srv.Serve(s.ln)
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(sctx)
	if e := <-errc; !errors.Is(e, http.ErrServerClosed) && err == nil {
		err = e
	}
	return err
}
