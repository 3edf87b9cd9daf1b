// Command ingest runs one callrouter ingest node: it owns the calls whose media it terminates,
// places them, and publishes their frames. With -play it plays WAV files as calls (for demos and
// tests). Every flag has an environment variable CALLROUTER_<FLAG>.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/cli"
	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/obs"
	"github.com/callrouter/callrouter/internal/player"
	"github.com/callrouter/callrouter/internal/sources"
	"github.com/callrouter/callrouter/internal/whip"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

func main() { os.Exit(run(os.Args[1:])) }

// player is the file source behind -play.
type playFlags struct {
	path       string
	calls      int
	tenant     string
	callPrefix string
	frames     int
	speed      float64
}

func run(args []string) int {
	fs := flag.NewFlagSet("ingest", flag.ContinueOnError)
	common := cli.CommonFlags(fs, ":8080")
	cfg := Flags(fs)
	var p playFlags
	fs.StringVar(&p.path, "play", "", "WAV file to play as calls (PCM16, μ-law or A-law; stereo = two legs)")
	fs.IntVar(&p.calls, "play-calls", 1, "concurrent calls to play the -play file as")
	fs.StringVar(&p.tenant, "play-tenant", "demo", "tenant of played calls")
	fs.StringVar(&p.callPrefix, "play-prefix", "play", "call id prefix of played calls (ids are prefix-N)")
	fs.IntVar(&p.frames, "play-frames", 0, "frames per leg to play (0 = the whole file once; more loops it)")
	fs.Float64Var(&p.speed, "play-speed", 1, "playback speed factor (1 = real time)")
	wcfg, whipOn := WHIPFlags(fs)
	lcfg := WHIPListenFlags(fs)
	scfg, sipListen := SIPFlags(fs)
	st := StreamFlags(fs)
	pprofOn := pprofFlag(fs)
	if err := cli.Parse(fs, args); err != nil {
		fmt.Fprintf(os.Stderr, "ingest: %v\n", err)
		return 2
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "ingest: %v\n", err)
		return 2
	}
	if *whipOn {
		wcfg.DrainTimeout = cfg.DrainTimeout // WHIP sessions drain with the node's calls
		if err := wcfg.LoadTokens(); err != nil {
			fmt.Fprintf(os.Stderr, "ingest: flag -whip-token-file: %v\n", err)
			return 2
		}
		if err := wcfg.Validate(); err != nil {
			fmt.Fprintf(os.Stderr, "ingest: %v\n", err)
			return 2
		}
		if err := lcfg.Validate(); err != nil {
			fmt.Fprintf(os.Stderr, "ingest: %v\n", err)
			return 2
		}
		if _, port, _ := net.SplitHostPort(lcfg.Addr); lcfg.Addr == common.HTTP && port != "0" { // ":0" twice: two free ports
			fmt.Fprintf(os.Stderr, "ingest: flags -whip-listen and -http: %q for both; /metrics must not share the public port\n", lcfg.Addr)
			return 2
		}
	}
	if *sipListen != "" {
		scfg.Listen = *sipListen
		if err := scfg.Validate(); err != nil {
			fmt.Fprintf(os.Stderr, "ingest: %v\n", err)
			return 2
		}
	}
	if err := st.Validate(cfg.DrainTimeout); err != nil {
		fmt.Fprintf(os.Stderr, "ingest: %v\n", err)
		return 2
	}
	var rec *filesrc.Recording
	if p.path != "" {
		var err error
		if rec, err = filesrc.Load(p.path, 0); err != nil {
			fmt.Fprintf(os.Stderr, "ingest: flag -play: %v\n", err)
			return 2
		}
		if p.calls < 1 || p.speed <= 0 {
			fmt.Fprintf(os.Stderr, "ingest: flags -play-calls and -play-speed must be positive\n")
			return 2
		}
	}
	if *sipListen == "" {
		scfg = nil
	}
	if !*whipOn {
		wcfg = nil
	}
	ah, tw := st.configs()
	srcCfg := sources.Config{WHIP: wcfg, Listen: *lcfg, SIP: scfg, AudioHook: ah, Twilio: tw}
	return cli.Main("ingest", cfg.ID, cfg.HeartbeatInterval, common, func(nc bus.Conn, log zerolog.Logger, reg *prometheus.Registry, h *obs.Health) (cli.Service, error) {
		dial := func(i int) (bus.Conn, error) {
			bc := common.NATS // the node's identity, TLS and server
			bc.Name = fmt.Sprintf("%s publish %d", bc.Name, i)
			return bus.Connect(bc, log)
		}
		// No I/O, so -check-config (nc nil) builds it as it is: the node's Run opens the extra connections.
		n, err := ingest.New(*cfg, ingest.Deps{NC: nc, Log: log, Registry: reg, Health: h, Dial: dial})
		if err != nil {
			return nil, err
		}
		src, err := sources.New(srcCfg, sources.Deps{Log: log, Registry: reg})
		if err != nil {
			return nil, err
		}
		return &service{n: n, rec: rec, p: p, log: log, src: src, pprof: *pprofOn}, nil
	})
}

// service runs the node and its sources.
type service struct {
	n   *ingest.Node
	rec *filesrc.Recording
	p   playFlags
	log zerolog.Logger
	src *sources.Set
	// pprof serves the runtime profiles on -http (flag -pprof).
	pprof bool
}

// Mount serves what the node adds to -http: the runtime profiles with -pprof, nothing else.
func (s *service) Mount(mux *http.ServeMux) {
	if s.pprof {
		mountPprof(mux)
	}
}

func (s *service) Run(ctx context.Context) error {
	// The node runs first (cli.Main calls this once NATS is up): the sources and players start
	// once it is ready, so that no call starts before its subscriptions and publishing
	// connections are in place and keeps the node's own connection for its frames.
	nctx, stop := context.WithCancel(ctx)
	defer stop()
	nodeErr, err := s.n.Start(nctx)
	if err != nil {
		return err
	}
	running, err := s.src.Start(ctx, s.n)
	if err != nil {
		stop()
		<-nodeErr
		return err
	}
	var wg sync.WaitGroup
	if s.rec != nil {
		for i := 0; i < s.p.calls; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				spec := s.rec.Spec(s.p.tenant, fmt.Sprintf("%s-%d", s.p.callPrefix, i), nil)
				for ctx.Err() == nil {
					_, err := player.Play(ctx, s.n, s.rec, spec, s.p.frames, s.p.speed)
					if err == nil || ctx.Err() != nil {
						return
					}
					wait, retry := ingest.RetryAfter(err)
					s.log.Warn().Err(err).Str("call", spec.Call).Msg("play failed")
					if !retry {
						return
					}
					select {
					case <-ctx.Done():
					case <-time.After(wait):
					}
				}
			}()
		}
	}
	err = <-nodeErr
	running.Wait()
	wg.Wait()
	return err
}

// Flags registers the ingest node's flags and returns the config they fill.
func Flags(fs *flag.FlagSet) *ingest.Config {
	cfg := ingest.DefaultConfig()
	cfg.ID = cli.Hostname()
	fs.StringVar(&cfg.ID, "id", cfg.ID, "ingest node id (unique; a subject token)")
	fs.Var((*cli.List)(&cfg.Pools), "pools", "worker pools every call is placed on, comma-separated")
	fs.DurationVar(&cfg.PlaceTimeout, "place-timeout", cfg.PlaceTimeout, "timeout of one placement request")
	fs.IntVar(&cfg.PlaceAttempts, "place-attempts", cfg.PlaceAttempts, "placement attempts for a new call")
	fs.DurationVar(&cfg.StrandedAfter, "stranded-after", cfg.StrandedAfter, "back from an absence this long (NATS cut off, or the process stopped), re-place every call at once instead of waiting for the routers' notice (0: wait)")
	fs.DurationVar(&cfg.ReplaceTimeout, "replace-timeout", cfg.ReplaceTimeout, "how long one failover re-placement retries (with backoff) before leaving the call to the routers' reconciliation")
	fs.DurationVar(&cfg.HeartbeatInterval, "heartbeat", cfg.HeartbeatInterval, "heartbeat interval")
	fs.DurationVar(&cfg.MediaTimeout, "media-timeout", cfg.MediaTimeout, "a call with no media for this long is ended")
	fs.DurationVar(&cfg.Ring, "ring", cfg.Ring, "per-leg replay ring length")
	fs.IntVar(&cfg.PublishConns, "nats-publish-conns", cfg.PublishConns, "NATS connections the node logs in with, its own among them (same identity). Its own carries the control traffic (place requests, heartbeats, replay answers), and frames only when it is the only one (1); N > 1 puts the frames on the N-1 others, each call on the first with fewer than "+strconv.Itoa(ingest.CallsPerPublishConn)+" calls when it starts (the least loaded once all have as many). 0: automatic, the node's own and one more, then another (opened ahead of need) each time the calls leave room for fewer than "+strconv.Itoa(ingest.CallsPerPublishConn/2)+" on them"+
		fmt.Sprintf(" (at most %d). nats-server caches subject matches per publishing connection: 512 subjects, 256 two-leg calls", ingest.MaxPublishConns))
	fs.IntVar(&cfg.RingMaxBytes, "ring-max-bytes", cfg.RingMaxBytes, "per-leg replay ring bound in bytes")
	fs.DurationVar(&cfg.MaxPause, "max-pause", cfg.MaxPause, "a secure pause (ingest.<id>.pause, router.api.pause) not resumed for this long resumes by itself, with a \"resumed\" event (reason max_pause)")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", cfg.DrainTimeout, "how long SIGTERM waits for calls (played, WHIP; SIP has -sip-drain-timeout) to end")
	return &cfg
}

// WHIPFlags registers the WHIP endpoint's flags and returns the config they fill and whether the
// endpoint is on. Call cfg.LoadTokens and cfg.Validate after parsing.
func WHIPFlags(fs *flag.FlagSet) (*whip.Config, *bool) {
	cfg := whip.DefaultConfig()
	on := fs.Bool("whip", true, "serve the WHIP endpoint (/whip) and the call page (/call/) on -whip-listen")
	fs.StringVar(&cfg.Path, "whip-path", cfg.Path, "URL path of the WHIP endpoint")
	fs.StringVar(&cfg.UDPAddr, "whip-udp", cfg.UDPAddr, "the one UDP address for every WebRTC session's media (ICE-lite, DTLS and SRTP on one socket)")
	fs.Var((*cli.List)(&cfg.PublicIPs), "whip-public-ip", "public IPs announced instead of the UDP socket's (NAT 1:1), comma-separated")
	fs.Var((*cli.List)(&cfg.Codecs), "whip-codecs", "accepted codecs in order of preference: opus, pcmu, pcma")
	fs.StringVar(&cfg.TokenFile, "whip-token-file", "", `bearer tokens, one "<tenant> <token>" a line`)
	fs.StringVar(&cfg.OpenTenant, "whip-open-tenant", "", "tenant of requests without a token (demo only; empty: a token is required)")
	fs.StringVar(&cfg.AllowOrigin, "whip-allow-origin", cfg.AllowOrigin, "Access-Control-Allow-Origin for pages on other origins")
	fs.IntVar(&cfg.MaxSessions, "whip-max-sessions", cfg.MaxSessions, "WHIP sessions this node takes at once (past it: 503)")
	fs.IntVar(&cfg.MaxSessionsPerTenant, "whip-max-sessions-per-tenant", cfg.MaxSessionsPerTenant, "WHIP sessions per tenant (0: no bound)")
	fs.Float64Var(&cfg.PostRate, "whip-post-rate", cfg.PostRate, "WHIP offers (POSTs) per second from one client address (0: no bound); past it: 429")
	fs.IntVar(&cfg.PostBurst, "whip-post-burst", cfg.PostBurst, "WHIP offers one client address may send at once before -whip-post-rate applies")
	fs.DurationVar(&cfg.ConnectTimeout, "whip-connect-timeout", cfg.ConnectTimeout, "a session not connected (ICE+DTLS) by then ends")
	fs.DurationVar(&cfg.MediaTimeout, "whip-media-timeout", cfg.MediaTimeout, "a connected call without RTP for this long ends")
	fs.DurationVar(&cfg.ICEFailed, "whip-ice-failed", cfg.ICEFailed, "ICE consent lost for this long ends the call (ice_failed)")
	fs.DurationVar(&cfg.ICEKeepalive, "whip-ice-keepalive", cfg.ICEKeepalive, "how often a session sends its peer an ICE consent check (at most half of -whip-ice-failed)")
	fs.DurationVar(&cfg.ReadCoalesce, "whip-read-coalesce", cfg.ReadCoalesce, "how long the WHIP socket's reader lets packets gather between batches (Linux); every packet waits up to that long, handshakes included; 0: read each as it comes, for lower setup time at some more CPU")
	fs.DurationVar(&cfg.ReorderWindow, "whip-reorder-window", cfg.ReorderWindow, "how long a packet waits for missing ones before they count as lost")
	return &cfg, on
}

// WHIPListenFlags registers the flags of the public listener serving WHIP and the call page
// (apart from -http, which serves /metrics and the probes) and returns the config they fill.
// Call cfg.Validate after parsing.
func WHIPListenFlags(fs *flag.FlagSet) *whip.ListenConfig {
	cfg := whip.DefaultListenConfig()
	l := &cfg.Limits
	fs.StringVar(&cfg.Addr, "whip-listen", cfg.Addr, "TCP address of the public listener for WHIP and the call page (never /metrics; that is -http)")
	fs.StringVar(&cfg.CertFile, "whip-tls-cert", "", "PEM certificate (chain) for HTTPS on -whip-listen (with -whip-tls-key; empty: plain HTTP, e.g. behind a TLS-terminating ingress)")
	fs.StringVar(&cfg.KeyFile, "whip-tls-key", "", "PEM private key of -whip-tls-cert")
	fs.DurationVar(&cfg.CertReload, "whip-tls-reload", cfg.CertReload, "how often the certificate files are checked for change (SIGHUP reloads at once)")
	cli.LimitFlags(fs, "whip", "whip-listen", l)
	return &cfg
}
