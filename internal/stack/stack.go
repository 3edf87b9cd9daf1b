// Package stack runs a whole callrouter in one process: an embedded NATS server (or an external
// one), router replicas, a worker pool and an ingest node, each on its own NATS connection as they
// would be in separate processes. The one-process mode and the end-to-end tests use it.
package stack

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/natsauth"
	"github.com/callrouter/callrouter/internal/obs"
	"github.com/callrouter/callrouter/internal/router"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Config says what to run.
type Config struct {
	NATSURL string // external server; empty starts an embedded one
	// URLFor, when set, gives the NATS URL for one component's connection (for example
	// "worker worker-2"), so tests can attach components to different cluster nodes.
	URLFor   func(name string) string
	Embedded bus.EmbeddedOptions // used when NATSURL is empty
	Routers  int                 // router replicas (default 1)
	Workers  int                 // workers in the pool (default 1)
	Router   router.Config       // ID is set per replica
	Worker   worker.Config       // ID is set per worker
	Ingest   ingest.Config       // ID defaults to "ingest-1"
	Log      zerolog.Logger
	Registry *prometheus.Registry // shared by every component; nil makes one
	// Auth, when set, turns NATS permissions on: the embedded server gets the set's users and
	// each component connects as its role's identity (natsauth.Find). With an external server
	// the server must already know the set's keys.
	Auth *natsauth.Set
	// TLSCA is the CA file components verify the server's certificate with (Embedded.TLSCert
	// makes the embedded server require TLS).
	TLSCA string
}

// Stack is a running one-process callrouter.
type Stack struct {
	Server  *bus.Embedded // nil with an external server
	URL     string
	Ingest  *ingest.Node
	Routers []*router.Router
	Workers []*worker.Worker
	Health  *obs.Health // the ingest node's readiness

	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	errs    []error
	conns   []*nats.Conn
	cancels map[any]context.CancelFunc
	log     zerolog.Logger
	reg     *prometheus.Registry
	cfg     Config
	ctx     context.Context
}

// Start starts everything and returns once each component runs and the ingest node is ready
// (ingest.Node.Ready: its publishing connections open, so that a call started from then on
// never keeps the node's own connection for its frames), or with the ingest node's error when
// it fails before. Routers and workers serve (routers see workers) a moment later, so callers
// poll for what they need.
func Start(cfg Config) (*Stack, error) {
	if cfg.Routers == 0 {
		cfg.Routers = 1
	}
	if cfg.Workers == 0 {
		cfg.Workers = 1
	}
	if cfg.Ingest.Pools == nil {
		id := cfg.Ingest.ID
		cfg.Ingest = ingest.DefaultConfig()
		cfg.Ingest.ID = id
	}
	if cfg.Ingest.ID == "" {
		cfg.Ingest.ID = "ingest-1"
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	guard.Register(cfg.Registry) // once, unlabelled: the components' registerers are wrapped
	s := &Stack{URL: cfg.NATSURL, log: cfg.Log, reg: cfg.Registry, cfg: cfg, cancels: map[any]context.CancelFunc{}, Health: &obs.Health{}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if s.URL == "" {
		if cfg.Embedded.Port == 0 {
			cfg.Embedded.Port = -1
		}
		if cfg.Auth != nil {
			users, err := cfg.Auth.Users()
			if err != nil {
				return nil, err
			}
			cfg.Embedded.Users = users
		}
		srv, err := bus.StartEmbedded(cfg.Embedded)
		if err != nil {
			return nil, err
		}
		s.Server, s.URL = srv, srv.URL()
	}
	for i := 0; i < cfg.Routers; i++ {
		if _, err := s.AddRouter(fmt.Sprintf("router-%d", i+1)); err != nil {
			s.Close()
			return nil, err
		}
	}
	for i := 0; i < cfg.Workers; i++ {
		if _, err := s.AddWorker(fmt.Sprintf("worker-%d", i+1), cfg.Worker); err != nil {
			s.Close()
			return nil, err
		}
	}
	nc, err := s.Connect(natsauth.RoleIngest, "", cfg.Ingest.ID)
	if err != nil {
		s.Close()
		return nil, err
	}
	dial := func(int) (*nats.Conn, error) { // Config.Ingest.PublishConns: the same identity and name
		return s.Connect(natsauth.RoleIngest, "", cfg.Ingest.ID)
	}
	s.Ingest, err = ingest.New(cfg.Ingest, ingest.Deps{NC: nc, Log: cfg.Log, Registry: prometheus.WrapRegistererWith(prometheus.Labels{"ingest": cfg.Ingest.ID}, s.reg), Health: s.Health, Dial: dial})
	if err != nil {
		s.Close()
		return nil, err
	}
	select {
	case <-s.Ingest.Ready():
	case <-s.run(s.Ingest, s.Ingest.Run):
		err := s.Close() // the node's error
		if err == nil {
			err = errors.New("stack: the ingest node stopped before it was ready")
		}
		return nil, err
	}
	return s, nil
}

// Connect opens a connection as a node of a role ("ingest", "router", "worker" with its pool,
// "tenant" or "admin" with its name as node): with Config.Auth, as the identity natsauth.Find
// picks for it. The stack closes it on Close.
func (s *Stack) Connect(role, pool, node string) (*nats.Conn, error) {
	name := role + " " + node
	bc := bus.DefaultConfig()
	bc.URL, bc.Name, bc.TLSCA = s.URL, name, s.cfg.TLSCA
	if s.cfg.Auth != nil {
		seed, err := s.cfg.Auth.Seed(role, pool, node)
		if err != nil {
			return nil, err
		}
		bc.NkeySeed = seed
	}
	if s.cfg.URLFor != nil {
		if u := s.cfg.URLFor(name); u != "" {
			bc.URL = u
		}
	}
	nc, err := bus.Connect(bc, s.log)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.conns = append(s.conns, nc)
	s.mu.Unlock()
	return nc, nil
}

// run runs f (a component's Run) until Close or Stop(key); its error is Close's. The returned
// channel is closed when f has returned.
func (s *Stack) run(key any, f func(context.Context) error) <-chan struct{} {
	ctx, cancel := context.WithCancel(s.ctx)
	s.mu.Lock()
	s.cancels[key] = cancel
	s.mu.Unlock()
	s.wg.Add(1)
	done := make(chan struct{})
	go func() {
		defer s.wg.Done()
		defer close(done)
		if err := f(ctx); err != nil {
			s.mu.Lock()
			s.errs = append(s.errs, err)
			s.mu.Unlock()
		}
	}()
	return done
}

// AddRouter starts one more router replica.
func (s *Stack) AddRouter(id string) (*router.Router, error) {
	rc := s.cfg.Router
	if rc.HeartbeatInterval == 0 {
		rc = router.DefaultConfig()
	}
	rc.ID = id
	nc, err := s.Connect(natsauth.RoleRouter, "", id)
	if err != nil {
		return nil, err
	}
	r, err := router.New(rc, router.Deps{NC: nc, Log: s.log, Registry: prometheus.WrapRegistererWith(prometheus.Labels{"router": id}, s.reg)})
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.Routers = append(s.Routers, r)
	s.mu.Unlock()
	s.run(r, r.Run)
	return r, nil
}

// AddWorker starts one more worker with the given config (its ID is set to id).
func (s *Stack) AddWorker(id string, wc worker.Config) (*worker.Worker, error) {
	if wc.Capacity == 0 {
		wc = worker.DefaultConfig()
	}
	wc.ID = id
	nc, err := s.Connect(natsauth.RoleWorker, wc.Pool, id)
	if err != nil {
		return nil, err
	}
	w, err := worker.New(wc, worker.Deps{NC: nc, Log: s.log, Registry: prometheus.WrapRegistererWith(prometheus.Labels{"worker": id}, s.reg)})
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.Workers = append(s.Workers, w)
	s.mu.Unlock()
	s.run(w, w.Run)
	return w, nil
}

// Stop stops one component started by the stack (a *router.Router or *worker.Worker): a worker
// drains as on SIGTERM.
func (s *Stack) Stop(component any) {
	s.mu.Lock()
	cancel := s.cancels[component]
	s.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// Registry returns the metrics registry shared by the components.
func (s *Stack) Registry() *prometheus.Registry { return s.reg }

// Close stops every component, waits for them, and shuts the embedded server down.
func (s *Stack) Close() error {
	s.cancel()
	s.wg.Wait()
	for _, w := range s.Workers {
		w.Close()
	}
	if s.Ingest != nil {
		s.Ingest.Close()
	}
	for _, nc := range s.conns {
		nc.Close()
	}
	if s.Server != nil {
		s.Server.Close()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(s.errs...)
}
