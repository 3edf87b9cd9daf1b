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

// Server serves /healthz, /readyz and /metrics, plus any extra handlers.
type Server struct {
	ln  net.Listener
	srv *http.Server
	Mux *http.ServeMux
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

// Listen binds addr (":0" picks a port) and prepares the handlers; Serve starts them.
func Listen(addr string, h *Health, reg *prometheus.Registry) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := NewMux(h, reg)
	return &Server{ln: ln, Mux: mux, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}}, nil
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
	go func() { errc <- s.srv.Serve(s.ln) }()
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
