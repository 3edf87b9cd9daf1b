// Package cli is what every callrouter main shares: flags with environment-variable equivalents,
// the NATS connection flags, the logger, the /healthz /readyz /metrics server and SIGTERM handling.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/obs"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/trace"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// EnvPrefix starts the environment variable of every flag of the services.
const EnvPrefix = "CALLROUTER_"

// EnvName returns the environment variable for a flag: CALLROUTER_ + upper case, '-' → '_'.
func EnvName(flagName string) string { return envName(EnvPrefix, flagName) }

func envName(prefix, flagName string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Parse parses args, then fills every flag not given on the command line from its environment
// variable. Errors name the flag (and variable) and why.
func Parse(fs *flag.FlagSet, args []string) error { return ParseEnv(fs, args, EnvPrefix) }

// ParseEnv is Parse with the variables under another prefix (the load tester's
// CALLROUTER_LOADTEST_).
func ParseEnv(fs *flag.FlagSet, args []string, prefix string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (flags only; see -h)", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		if v, ok := os.LookupEnv(envName(prefix, f.Name)); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("invalid value %q for %s (flag -%s): %v", v, envName(prefix, f.Name), f.Name, err))
			}
		}
	})
	return errors.Join(errs...)
}

// List is a comma-separated list flag.
type List []string

// String implements flag.Value.
func (l *List) String() string { return strings.Join(*l, ",") }

// Set implements flag.Value; it replaces the list.
func (l *List) Set(s string) error {
	*l = nil
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

// Append is a list flag that grows with every use: "-x a,b -x c" gives [a b c].
type Append []string

// String implements flag.Value.
func (a *Append) String() string { return strings.Join(*a, ",") }

// Set implements flag.Value; it appends.
func (a *Append) Set(s string) error {
	var l List
	_ = l.Set(s)
	*a = append(*a, l...)
	return nil
}

// Common are the flags every binary has.
type Common struct {
	NATS        bus.Config
	HTTP        string
	HTTPLimits  *obs.Limits
	Trace       *trace.Config // -otlp-endpoint
	LogLevel    string
	CheckConfig bool          // -check-config: validate, print what would be served, exit
	fs          *flag.FlagSet // the binary's flags, printed by -check-config
}

// CommonFlags registers the shared flags with their defaults.
func CommonFlags(fs *flag.FlagSet, httpDefault string) *Common {
	c := &Common{NATS: bus.DefaultConfig(), fs: fs}
	fs.StringVar(&c.NATS.URL, "nats", c.NATS.URL, "NATS server URLs, comma-separated")
	NATSCredentialFlags(fs, &c.NATS)
	fs.IntVar(&c.NATS.ReconnectBuf, "nats-reconnect-buf", c.NATS.ReconnectBuf, "bytes buffered while reconnecting")
	fs.StringVar(&c.HTTP, "http", httpDefault, "address for /healthz, /readyz and /metrics")
	c.HTTPLimits = HTTPLimitFlags(fs)
	c.Trace = TraceFlags(fs)
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.BoolVar(&c.CheckConfig, "check-config", false, "validate the flags and environment, print what would be served as one JSON line, exit without connecting")
	return c
}

// TraceFlags registers -otlp-endpoint, where call setup traces go (trace.Config).
func TraceFlags(fs *flag.FlagSet) *trace.Config {
	t := &trace.Config{}
	fs.StringVar(&t.Endpoint, "otlp-endpoint", "", "OTLP/HTTP base URL that call setup traces are sent to, e.g. http://otel-collector:4318 "+
		"(/v1/traces is appended; empty: OTEL_EXPORTER_OTLP_ENDPOINT if set, else no tracing)")
	return t
}

// StartTracing installs the tracer provider t configures for a component (trace.Setup); stop
// flushes the spans still batched, with a deadline of its own.
func StartTracing(t *trace.Config, component, id string) (stop func(), err error) {
	cfg := trace.Config{Service: component, Instance: id}
	if t != nil {
		cfg.Endpoint = t.Endpoint
	}
	shutdown, err := trace.Setup(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = shutdown(ctx)
	}, nil
}

// HTTPLimitFlags registers the -http listener's limit flags (LimitFlags) and returns the limits
// they fill, starting from obs.DefaultLimits.
func HTTPLimitFlags(fs *flag.FlagSet) *obs.Limits {
	l := obs.DefaultLimits()
	LimitFlags(fs, "http", "http", &l)
	return &l
}

// LimitFlags registers the flags that bound the HTTP listener set by flag -<listen>:
// -<prefix>-max-conns, -<prefix>-max-conns-per-source and -<prefix>-{read-header,read,write,
// idle}-timeout, the names obs.Limits.CheckFlags(prefix) reports, with l's values as defaults.
func LimitFlags(fs *flag.FlagSet, prefix, listen string, l *obs.Limits) {
	on := "on -" + listen
	fs.IntVar(&l.MaxConns, prefix+"-max-conns", l.MaxConns, "open connections "+on+" at most (0: no bound)")
	fs.IntVar(&l.MaxConnsPerSource, prefix+"-max-conns-per-source", l.MaxConnsPerSource,
		"open connections "+on+" from one client address (0: no bound; raise it behind a proxy, where every client shares its address)")
	fs.DurationVar(&l.ReadHeaderTimeout, prefix+"-read-header-timeout", l.ReadHeaderTimeout, "time to read a request's headers "+on)
	fs.DurationVar(&l.ReadTimeout, prefix+"-read-timeout", l.ReadTimeout, "time to read a whole request "+on+" (event streams lift it)")
	fs.DurationVar(&l.WriteTimeout, prefix+"-write-timeout", l.WriteTimeout, "time from a request's headers to the end of its answer "+on+" (event streams lift it)")
	fs.DurationVar(&l.IdleTimeout, prefix+"-idle-timeout", l.IdleTimeout, "an idle keep-alive connection "+on+" is closed after this")
}

// httpLimits returns the limits the flags set, or the defaults for a Common built by hand.
func (c *Common) httpLimits() obs.Limits {
	if c.HTTPLimits == nil {
		return obs.DefaultLimits()
	}
	return *c.HTTPLimits
}

// Hostname returns the host name, or "local".
func Hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "local"
	}
	return h
}

// Service is a component a main runs.
type Service interface {
	Run(ctx context.Context) error
}

// Mounter is implemented by services that serve HTTP handlers (the router's status page) on the
// binary's -http server next to /healthz, /readyz and /metrics.
type Mounter interface {
	Mount(mux *http.ServeMux)
}

// Build makes a main's service. It must do no I/O (the style of every New), so that
// -check-config can call it with a nil connection.
type Build func(nc bus.Conn, log zerolog.Logger, reg *prometheus.Registry, h *obs.Health) (Service, error)

// LiveMisses is how many of its own heartbeat intervals a component may go without a heartbeat
// seen on NATS before /healthz fails (while connected; without NATS nothing can be judged).
const LiveMisses = 10

// Main runs one component: logger, NATS connection, HTTP server, and build → Run until SIGTERM or
// SIGINT. With -check-config it only checks the configuration (see Check). It returns the process
// exit code.
//
// NATS need not be up: the binary starts, serves /healthz (200) and /readyz (503), keeps trying,
// and runs the component once connected. /readyz fails whenever the connection is down; /healthz
// fails when the component, connected, has not published its heartbeat on hb.<component>.<id>
// (every heartbeat) for LiveMisses intervals: its own loop is stuck. HTTP handlers the component
// mounts answer 503 with Retry-After until it runs.
func Main(component, id string, heartbeat time.Duration, c *Common, build Build) int {
	log, err := obs.Logger(os.Stderr, c.LogLevel, component, id)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: flag -log-level: %v\n", component, err)
		return 2
	}
	if err := c.httpLimits().Check(); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", component, err)
		return 2
	}
	if c.Trace != nil {
		if err := c.Trace.Validate(); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", component, err)
			return 2
		}
	}
	if c.CheckConfig {
		return Check(component, id, c, build, log, os.Stdout, os.Stderr)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	return run(ctx, component, id, heartbeat, c, build, log)
}

func run(ctx context.Context, component, id string, heartbeat time.Duration, c *Common, build Build, log zerolog.Logger) int {
	stopTracing, err := StartTracing(c.Trace, component, id)
	if err != nil {
		log.Error().Err(err).Str("flag", "otlp-endpoint").Msg("cannot start tracing")
		return 2
	}
	defer stopTracing() // last: spans of the drain are flushed too
	c.NATS.Name = component + " " + id
	c.NATS.WaitForServer = true
	nc, err := bus.Connect(c.NATS, log)
	if err != nil {
		log.Error().Err(err).Msg("cannot connect to NATS")
		return 1
	}
	defer nc.Close()
	reg := obs.NewRegistry()
	guard.Register(reg) // callrouter_panics_total, whichever component runs
	// callrouter_nats_* and the expiry of the NATS TLS certificates.
	if err := RegisterMetrics(reg, nc, c.NATS); err != nil {
		log.Error().Err(err).Msg("cannot register the NATS metrics")
		return 1
	}
	h := &obs.Health{}
	h.SetLive(true) // waiting for NATS is healthy; the component's loop is judged once it runs
	h.AddReadyCheck("nats", func() error { return bus.Connected(nc) })
	live := &liveness{nc: nc, window: LiveMisses * heartbeat}
	live.beat()
	h.AddLiveCheck("heartbeat", live.check)
	svc, err := build(nc, log, reg, h)
	if err != nil {
		log.Error().Err(err).Msg("bad configuration")
		return 2
	}
	srv, err := obs.ListenLimits(c.HTTP, h, reg, c.httpLimits())
	if err != nil {
		log.Error().Err(err).Str("flag", "http").Msg("cannot listen")
		return 2
	}
	var running atomic.Bool
	if m, ok := svc.(Mounter); ok {
		app := http.NewServeMux()
		m.Mount(app)
		srv.Mux.Handle("/", gate(&running, app))
	}
	// The component's own heartbeats, echoed by the server, are its liveness; this subscription,
	// made before the first connection, is sent when it is made.
	sub, err := nc.Subscribe(subjects.Heartbeat(component, id), func(*nats.Msg) { live.beat() })
	if err != nil {
		log.Error().Err(err).Msg("cannot subscribe to its own heartbeat")
		return 1
	}
	defer func() { _ = sub.Unsubscribe() }()
	var wg sync.WaitGroup
	defer wg.Wait()
	httpCtx, httpStop := context.WithCancel(context.Background())
	defer httpStop()
	wg.Add(2)
	go func() { defer wg.Done(); _ = srv.Run(httpCtx) }()
	go func() { defer wg.Done(); live.run(httpCtx, heartbeat) }()
	defer context.AfterFunc(ctx, live.stop)()

	log.Info().Str("http", srv.Addr()).Str("nats", redactURLs(c.NATS.URL)).Msg("started; waiting for NATS")
	for bus.Connected(nc) != nil {
		select {
		case <-ctx.Done():
			log.Info().Msg("stopped before NATS was reached")
			return 0
		case <-time.After(50 * time.Millisecond):
		}
	}
	live.beat()
	running.Store(true)
	log.Info().Str("nats", nc.ConnectedUrlRedacted()).Msg("running")
	err = svc.Run(ctx)
	// Let in-flight publishes reach the server before the connection closes.
	_ = nc.FlushTimeout(2 * time.Second)
	if err != nil {
		log.Error().Err(err).Msg("stopped with error")
		return 1
	}
	log.Info().Msg("stopped")
	return 0
}

// gate serves next once running is set, and 503 with Retry-After before: the component's own
// handlers (WHIP) wait for it to run.
func gate(running *atomic.Bool, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !running.Load() {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "not running yet: waiting for NATS", http.StatusServiceUnavailable)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// liveness judges the component's own loop by its heartbeats as echoed by the server. Without a
// connection nothing can be judged, so the time of the last beat moves on while disconnected, and
// a (re)connection gets a whole window to see one; after shutdown begins nothing is judged.
type liveness struct {
	nc       bus.Conn
	window   time.Duration
	last     atomic.Int64 // unix ns of the last heartbeat seen (or disconnected moment)
	stopping atomic.Bool
}

func (l *liveness) beat() { l.last.Store(time.Now().UnixNano()) }
func (l *liveness) stop() { l.stopping.Store(true) }

// run beats every interval while disconnected, until ctx ends.
func (l *liveness) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if bus.Connected(l.nc) != nil {
				l.beat()
			}
		}
	}
}

func (l *liveness) check() error {
	if l.stopping.Load() || bus.Connected(l.nc) != nil {
		return nil
	}
	if since := time.Since(time.Unix(0, l.last.Load())); since > l.window {
		return fmt.Errorf("no heartbeat of its own seen for %v", since.Round(time.Millisecond))
	}
	return nil
}
