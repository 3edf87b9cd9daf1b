// Command callrouter runs a whole callrouter in one process (an embedded NATS server, a router,
// a worker pool and an ingest node), plays a recording as calls and prints the events they
// produce. With no flags it plays the shipped two-leg sample call once.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/cli"
	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/natsauth"
	"github.com/callrouter/callrouter/internal/obs"
	"github.com/callrouter/callrouter/internal/player"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/sample"
	"github.com/callrouter/callrouter/internal/sip"
	"github.com/callrouter/callrouter/internal/sources"
	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/trace"
	"github.com/callrouter/callrouter/internal/wav"
	"github.com/callrouter/callrouter/internal/whip"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/nats-io/nats.go"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout)) }

type options struct {
	wavPath  string
	calls    int
	workers  int
	natsPort int
	http     string
	limits   *obs.Limits
	trace    *trace.Config
	serve    bool
	speed    float64
	logLevel string
	json     bool
	whipUDP  string
	whip     whip.ListenConfig
	recDir   string
	sip      string
	keysDir  string
	sources  sources.Config // the call page and WHIP (the demo tenant needs no token), SIP with -sip-listen
}

// parse reads the flags and environment and checks them; errors name the flag.
func parse(args []string) (*options, error) {
	fs := flag.NewFlagSet("callrouter", flag.ContinueOnError)
	o := &options{}
	fs.StringVar(&o.wavPath, "wav", "", "WAV file to play (default: the shipped two-leg sample call)")
	fs.IntVar(&o.calls, "calls", 1, "concurrent calls to play")
	fs.IntVar(&o.workers, "workers", 2, "workers in the pool")
	fs.IntVar(&o.natsPort, "nats-port", -1, "embedded NATS client port (-1 picks a free one)")
	fs.StringVar(&o.http, "http", "127.0.0.1:8080", "address for /healthz, /readyz and /metrics")
	o.limits = cli.HTTPLimitFlags(fs)
	o.trace = cli.TraceFlags(fs)
	fs.BoolVar(&o.serve, "serve", false, "keep running after the calls end, until SIGTERM")
	fs.Float64Var(&o.speed, "speed", 1, "playback speed factor (1 = real time)")
	fs.StringVar(&o.logLevel, "log-level", "warn", "log level of the components: debug, info, warn, error")
	fs.BoolVar(&o.json, "json", false, "print events as JSON lines instead of text")
	fs.StringVar(&o.recDir, "record-dir", filepath.Join(os.TempDir(), "callrouter-recordings"), "directory for call recordings (one WAV per call, a channel per leg)")
	fs.StringVar(&o.sip, "sip-listen", "", "also answer SIP calls (UDP+TCP) on this address, e.g. 127.0.0.1:5060")
	fs.StringVar(&o.keysDir, "nats-keys-dir", "", "write the embedded NATS server's nkey seeds here (<identity>.nk, e.g. admin-local.nk for the nats CLI's --nkey); by default they live only in memory")
	fs.StringVar(&o.whipUDP, "whip-udp", "127.0.0.1:8443", "UDP address for WebRTC media of the browser call page (/call/)")
	o.whip = whip.DefaultListenConfig()
	fs.StringVar(&o.whip.Addr, "whip-listen", "127.0.0.1:8443", "TCP address of the call page (/call/) and its WHIP endpoint (/whip); never /metrics, that is -http")
	fs.StringVar(&o.whip.CertFile, "whip-tls-cert", "", "PEM certificate for HTTPS on -whip-listen (with -whip-tls-key): a browser on another machine grants the microphone only to https")
	fs.StringVar(&o.whip.KeyFile, "whip-tls-key", "", "PEM private key of -whip-tls-cert")
	if err := cli.Parse(fs, args); err != nil {
		return nil, err
	}
	if o.calls < 1 || o.workers < 1 || o.speed <= 0 {
		return nil, errors.New("flags -calls, -workers and -speed must be positive")
	}
	if err := o.limits.Check(); err != nil {
		return nil, err
	}
	if err := o.whip.Validate(); err != nil {
		return nil, err
	}
	wcfg := whip.DefaultConfig()
	wcfg.UDPAddr, wcfg.OpenTenant = o.whipUDP, "demo"
	o.sources = sources.Config{WHIP: &wcfg, Listen: o.whip}
	if o.sip != "" {
		scfg := sip.DefaultConfig()
		scfg.Listen, scfg.DefaultTenant = o.sip, "demo"
		if err := scfg.Validate(); err != nil {
			return nil, fmt.Errorf("flag -sip-listen: %w", err)
		}
		o.sources.SIP = &scfg
	}
	return o, nil
}

// recording loads the -wav file, or the shipped sample without one.
func (o *options) recording() (*filesrc.Recording, error) {
	var audio *wav.Audio
	var err error
	if o.wavPath == "" {
		audio, err = sample.Call()
	} else {
		audio, err = wav.ReadFile(o.wavPath)
	}
	if err != nil {
		return nil, fmt.Errorf("flag -wav: %w", err)
	}
	rec, err := filesrc.FromAudio(audio, 0)
	if err != nil {
		return nil, fmt.Errorf("flag -wav: %w", err)
	}
	return rec, nil
}

func run(args []string, out io.Writer) int {
	o, err := parse(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "callrouter: %v\n", err)
		return 2
	}
	rec, err := o.recording()
	if err != nil {
		fmt.Fprintf(os.Stderr, "callrouter: %v\n", err)
		return 2
	}
	log, err := obs.Logger(os.Stderr, o.logLevel, "callrouter", "local")
	if err != nil {
		fmt.Fprintf(os.Stderr, "callrouter: flag -log-level: %v\n", err)
		return 2
	}
	stopTracing, err := cli.StartTracing(o.trace, "callrouter", "local")
	if err != nil {
		fmt.Fprintf(os.Stderr, "callrouter: %v\n", err)
		return 2
	}
	defer stopTracing()
	wc := worker.DefaultConfig()
	wc.Processors = []string{"accounting", "speech", "dtmf", "levels", "record", "summary"}
	// The call page's level meters need a level event per leg every 200 ms; the printer skips them.
	wc.ProcessorOptions = map[string]proc.Options{"record": {"dir": o.recDir}, "levels": {"meter_ms": "200"}}
	reg := obs.NewRegistry()
	// Permissions on, as in production: each component connects as its role's identity
	// (docs/security.md); the event printer below is the operator "local".
	auth, err := natsauth.NewSet(natsauth.Local([]string{wc.Pool}, "demo"))
	if err == nil && o.keysDir != "" {
		err = auth.WriteKeys(o.keysDir)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "callrouter: flag -nats-keys-dir: %v\n", err)
		return 2
	}
	s, err := stack.Start(stack.Config{Embedded: bus.EmbeddedOptions{Port: o.natsPort}, Workers: o.workers, Worker: wc, Log: log, Registry: reg, Auth: auth})
	if err != nil {
		fmt.Fprintf(os.Stderr, "callrouter: %v\n", err)
		return 1
	}
	defer s.Close()
	srv, err := obs.ListenLimits(o.http, s.Health, reg, *o.limits)
	if err != nil {
		fmt.Fprintf(os.Stderr, "callrouter: flag -http: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	// The call page and WHIP on their own listener apart from /metrics and the probes on -http.
	src, err := sources.New(o.sources, sources.Deps{Log: log, Registry: reg})
	if err != nil {
		fmt.Fprintf(os.Stderr, "callrouter: %v\n", err)
		return 2
	}
	running, err := src.Start(ctx, s.Ingest)
	if err != nil {
		fmt.Fprintf(os.Stderr, "callrouter: %v\n", err)
		return 2
	}
	defer func() {
		stop()
		running.Wait()
	}() // before s.Close: sessions end while ingest still runs
	go func() { _ = srv.Run(ctx) }()
	fmt.Fprintf(out, "callrouter: NATS %s, metrics http://%s/metrics, call page %s/call/, %d workers; playing %d call(s) of %.1f s\n",
		s.URL, srv.Addr(), running.PublicURL(), o.workers, o.calls, float64(rec.Len())*0.02/o.speed)

	// Print every event, in arrival order, until the calls are done.
	nc, err := s.Connect(natsauth.RoleAdmin, "", "local")
	if err != nil {
		fmt.Fprintf(os.Stderr, "callrouter: %v\n", err)
		return 1
	}
	defer nc.Close()
	pr := &printer{out: out, json: o.json}
	sub, err := nc.Subscribe("events.>", pr.event)
	if err != nil || nc.Flush() != nil {
		fmt.Fprintf(os.Stderr, "callrouter: cannot subscribe to events: %v\n", err)
		return 1
	}
	defer func() { _ = sub.Unsubscribe() }()
	// Wait for the workers to be visible before the first call.
	for deadline := time.Now().Add(10 * time.Second); len(s.Routers[0].Workers()) < o.workers && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	var wg sync.WaitGroup
	for i := 0; i < o.calls; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			spec := rec.Spec("demo", fmt.Sprintf("call-%d", i+1), map[string]string{"source": "sample"})
			if _, err := player.Play(ctx, s.Ingest, rec, spec, 0, o.speed); err != nil {
				pr.failure(spec.Call, err)
			}
		}()
	}
	wg.Wait()
	// The workers publish their last events when every leg's last frame arrives.
	for deadline := time.Now().Add(10 * time.Second); !pr.done(o.calls) && ctx.Err() == nil && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	_ = nc.Flush()
	if o.serve {
		fmt.Fprintln(out, "callrouter: calls done; serving until SIGTERM")
		<-ctx.Done()
	}
	if pr.failures() > 0 {
		return 1
	}
	return 0
}

// printer writes every event to out as it arrives and counts the calls that stopped or failed.
type printer struct {
	out  io.Writer
	json bool

	mu              sync.Mutex
	stopped, failed int
}

func (p *printer) event(m *nats.Msg) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ev wire.Event
	if json.Unmarshal(m.Data, &ev) != nil {
		return
	}
	if ev.Kind == "stopped" {
		p.stopped++
	}
	if p.json {
		fmt.Fprintln(p.out, string(m.Data))
		return
	}
	if ev.Kind == "level" { // five a second per leg, for the call page's meters
		return
	}
	fmt.Fprintf(p.out, "%s %s/%s %-10s %-16s %s\n", ev.Time.Format("15:04:05.000"), ev.Tenant, ev.Call, ev.Kind, ev.Source, ev.Data)
}

// failure reports a call that could not be played.
func (p *printer) failure(call string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failed++
	fmt.Fprintf(p.out, "%s: %v\n", call, err)
}

// done reports whether every one of calls has stopped or failed.
func (p *printer) done(calls int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopped >= calls-p.failed
}

func (p *printer) failures() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failed
}
