// Command loadtest replays recorded calls into callrouter at N concurrent calls, accounts for
// every frame, and reports latency percentiles, loss with gap causes, CPU and memory, as text,
// JSON and HTML, with an optional pass/fail verdict in its exit code (0 pass, 1 fail, 2 error).
// Every flag has an environment equivalent: CALLROUTER_LOADTEST_<FLAG>, upper case, dashes as
// underscores (CALLROUTER_LOADTEST_CALL_DURATION=30s); flags win over the environment.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/callrouter/callrouter/internal/cli"
	"github.com/callrouter/callrouter/internal/obs"
	"github.com/callrouter/callrouter/loadtest"
	"github.com/callrouter/callrouter/loadtest/inproc"
)

const envPrefix = "CALLROUTER_LOADTEST_"

// options is what the flags fill beyond loadtest.Config.
type options struct {
	cfg      loadtest.Config
	jsonOut  string
	htmlOut  string
	logLevel string
	stackLog string
	quiet    bool
	cpuProf  string
	memProf  string
	auth     *natsAuth // -nats-creds, -nats-nkey, -nats-tls-* (natsflags.go)
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "loadtest:", err)
		return 2
	}
	log, err := obs.Logger(stderr, o.logLevel, "loadtest", "loadtest")
	if err != nil {
		fmt.Fprintln(stderr, "loadtest: -log-level:", err)
		return 2
	}
	stackLog, err := obs.Logger(stderr, o.stackLog, "callrouter", "in-process")
	if err != nil {
		fmt.Fprintln(stderr, "loadtest: -stack-log-level:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var progress io.Writer = stderr
	if o.quiet {
		progress = nil
	}
	if o.cpuProf != "" {
		f, err := os.Create(o.cpuProf)
		if err != nil {
			fmt.Fprintln(stderr, "loadtest: -cpuprofile:", err)
			return 2
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(stderr, "loadtest: -cpuprofile:", err)
			return 2
		}
		defer pprof.StopCPUProfile()
	}
	natsOpts, err := o.auth.options()
	if err != nil {
		fmt.Fprintln(stderr, "loadtest:", err)
		return 2
	}
	rep, err := loadtest.Run(ctx, o.cfg, loadtest.Deps{Log: log, StackLog: stackLog, Progress: progress, Command: commandLine(args),
		Harness: inproc.StartWith(o.auth.cfg), NATS: natsOpts})
	if err != nil {
		fmt.Fprintln(stderr, "loadtest:", explain(err))
		return 2
	}
	if err := writeFile(o.memProf, func(w io.Writer) error { return pprof.Lookup("allocs").WriteTo(w, 0) }); err != nil {
		fmt.Fprintln(stderr, "loadtest: -memprofile:", err)
		return 2
	}
	rep.WriteText(stdout)
	if err := writeFile(o.jsonOut, rep.WriteJSON); err != nil {
		fmt.Fprintln(stderr, "loadtest: -json:", err)
		return 2
	}
	if err := writeFile(o.htmlOut, rep.WriteHTML); err != nil {
		fmt.Fprintln(stderr, "loadtest: -html:", err)
		return 2
	}
	if rep.Checked && !rep.Pass {
		return 1
	}
	return 0
}

// secretFlags are the flags whose values the report leaves out.
var secretFlags = map[string]bool{"whip-token": true, "audiohook-secret": true, "twilio-token": true}

// commandLine is the command for the report, with tokens and secrets left out.
func commandLine(args []string) string {
	out := []string{"loadtest"}
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, _, withValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		switch {
		case !strings.HasPrefix(a, "-") || !secretFlags[name]:
			out = append(out, a)
		case withValue:
			k, _, _ := strings.Cut(a, "=")
			out = append(out, k+"=REDACTED")
		default:
			out = append(out, a, "REDACTED")
			i++
		}
	}
	return strings.Join(out, " ")
}

func writeFile(path string, write func(io.Writer) error) error {
	if path == "" {
		return nil
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// parse fills options from the flags, then the environment for flags not given, then validates.
func parse(args []string, stderr io.Writer) (*options, error) {
	o := &options{cfg: loadtest.DefaultConfig(), logLevel: "warn", stackLog: "error"}
	fs := Flags(&o.cfg)
	fs.StringVar(&o.jsonOut, "json", "", "write the JSON report to this file")
	fs.StringVar(&o.htmlOut, "html", "", "write the HTML report to this file")
	fs.StringVar(&o.logLevel, "log-level", o.logLevel, "log level of the tester: debug, info, warn, error")
	fs.StringVar(&o.stackLog, "stack-log-level", o.stackLog, "log level of the in-process stack (its workers log every gap at warn)")
	fs.BoolVar(&o.quiet, "quiet", false, "no progress lines")
	fs.StringVar(&o.cpuProf, "cpuprofile", "", "write a CPU profile of the whole run (tester and in-process stack) to this file, for go tool pprof")
	fs.StringVar(&o.memProf, "memprofile", "", "write an allocation profile of the whole run to this file at the end, for go tool pprof")
	o.auth = natsAuthFlags(fs)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: loadtest -input FILE|DIR [flags]\n\nReplays recorded calls into callrouter and accounts for every frame.\n"+
			"Every flag can also be set as %s<FLAG> (upper case, - as _).\n\n", envPrefix)
		fs.PrintDefaults()
	}
	if err := cli.ParseEnv(fs, args, envPrefix); err != nil {
		return nil, err
	}
	if err := o.cfg.Validate(); err != nil {
		return nil, fmt.Errorf("bad flag (or %s* variable):\n%w", envPrefix, err)
	}
	if err := o.auth.check(o.cfg.NATSURL); err != nil {
		return nil, err
	}
	if o.cfg.Mode == loadtest.ModeNATS {
		fmt.Fprintf(stderr, "loadtest: note: -mode %s is the old name of -mode %s (calls through an ingest node in this process); it still works\n",
			loadtest.ModeNATS, loadtest.ModeInproc)
	}
	return o, nil
}

// Flags registers the load test's flags on a new FlagSet, filling cfg (which should start as
// loadtest.DefaultConfig()).
func Flags(cfg *loadtest.Config) *flag.FlagSet {
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	fs.StringVar(&cfg.Mode, "mode", cfg.Mode, "inproc (old name: nats): calls through an ingest node in this process onto NATS to the router and workers, in-process or remote (-nats), never a remote ingest; sip: SIP UAC + RTP into the SIP ingest (SIPREC for two legs); whip: pion WHIP clients into the WebRTC ingest (one leg); audiohook: Genesys AudioHook clients (signed upgrade, 200 ms PCMU, one or two legs) into the AudioHook ingest; twilio: Twilio Media Streams (20 ms μ-law per track, one or two legs) into the Twilio ingest; baseline: raw NATS publishers to subscribers only")
	fs.StringVar(&cfg.SIP, "sip", cfg.SIP, "sip mode: host:port of a running SIP ingest (with -nats); empty runs one in-process")
	fs.StringVar(&cfg.WHIP, "whip", cfg.WHIP, "whip mode: endpoint URL of a running WHIP ingest (with -nats); empty runs one in-process")
	fs.StringVar(&cfg.WHIPToken, "whip-token", cfg.WHIPToken, "whip mode: bearer token")
	fs.StringVar(&cfg.AudioHook, "audiohook", cfg.AudioHook, "audiohook mode: ws:// or wss:// URL of a running AudioHook server (with -nats and -audiohook-key); empty runs one in-process")
	fs.StringVar(&cfg.AudioHookKey, "audiohook-key", cfg.AudioHookKey, "audiohook mode: the X-API-KEY of a remote server's key file (its tenant should be -tenant)")
	fs.StringVar(&cfg.AudioHookSecret, "audiohook-secret", cfg.AudioHookSecret, "audiohook mode: the key's client secret, base64 (empty: unsigned upgrades, for a key whose secret is -)")
	fs.StringVar(&cfg.Twilio, "twilio", cfg.Twilio, "twilio mode: ws:// or wss:// URL of a running Media Streams server (with -nats and -twilio-token); empty runs one in-process")
	fs.StringVar(&cfg.TwilioToken, "twilio-token", cfg.TwilioToken, "twilio mode: the token sent in start.customParameters (its tenant should be -tenant)")
	fs.DurationVar(&cfg.HangupDelay, "hangup-delay", cfg.HangupDelay, "sip, whip, audiohook and twilio modes: wait this long after a call's last packet before BYE/DELETE/close/stop (0 races them)")
	fs.StringVar(&cfg.RTPSocket, "sip-rtp-socket", cfg.RTPSocket, "sip mode: leg (each leg sends RTP from its own socket and source port, one sendto per packet), shared (every leg from one socket and port, packets sent in sendmmsg batches: under half the tester's CPU per packet; the ingest must route by destination port, so not with its -sip-rtp-shared), or auto: shared for the in-process SIP ingest, leg for a remote one (-sip)")
	fs.Float64Var(&cfg.Impair.Loss, "loss", 0, "sip mode: probability an RTP packet is dropped")
	fs.DurationVar(&cfg.Impair.Jitter, "jitter", 0, "sip mode: each RTP packet is delayed by a uniform random 0..jitter")
	fs.Float64Var(&cfg.Impair.Reorder, "reorder", 0, "sip mode: probability an RTP packet is sent after the next one (with -jitter 0)")
	fs.BoolVar(&cfg.Baseline, "baseline", cfg.Baseline, "first run a raw NATS baseline phase at the same message rate and sizes, and report the ratios")
	fs.BoolVar(&cfg.Floor, "floor", cfg.Floor, "with -baseline: also run raw NATS read by one wildcard subscription per subscriber connection (the fastest consumption NATS allows) and report callrouter's distance to it")
	fs.Func("input", "WAV (PCM16, μ-law, A-law; mono = 1 leg, stereo = 2) or classic pcap file, or a directory of them; repeat or comma-separate; played round-robin", func(s string) error {
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				cfg.Inputs = append(cfg.Inputs, p)
			}
		}
		return nil
	})
	fs.IntVar(&cfg.Rounds, "rounds", cfg.Rounds, "with -baseline: alternate baseline and callrouter phases this many times (fairer on a shared machine); percentiles over all rounds")
	fs.IntVar(&cfg.Legs, "legs", cfg.Legs, "legs per call taken from each input (0: every channel or RTP stream)")
	fs.IntVar(&cfg.Calls, "calls", cfg.Calls, "concurrent calls")
	fs.Float64Var(&cfg.Ramp, "ramp", cfg.Ramp, "calls started per second")
	fs.DurationVar(&cfg.CallDuration, "call-duration", cfg.CallDuration, "length of each call (0: the whole recording; longer loops it)")
	fs.DurationVar(&cfg.RunTime, "run-time", cfg.RunTime, "keep -calls calls up this long, replacing the ones that end (0: play -calls calls once each)")
	fs.Float64Var(&cfg.Speed, "speed", cfg.Speed, "pacing speed factor (1 = real time, 2 = twice as fast)")
	fs.StringVar(&cfg.Tenant, "tenant", cfg.Tenant, "tenant of the test calls")
	fs.StringVar(&cfg.NATSURL, "nats", cfg.NATSURL, "NATS URL of a running callrouter (empty: start a one-process callrouter in this process)")
	fs.IntVar(&cfg.Workers, "workers", cfg.Workers, "in-process stack: workers in the pool (also the baseline's subscriber connections)")
	fs.Func("whip-read-coalesce", "whip mode, the in-process endpoint: its -whip-read-coalesce, how long its socket reader lets packets gather between batches (0: none; default: the endpoint's own)", func(v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return err
		}
		cfg.WHIPReadCoalesce = &d
		return nil
	})
	fs.IntVar(&cfg.PublishConns, "publish-conns", cfg.PublishConns, "the in-process stack's ingest node: NATS connections its calls' frames are published on (ingest's -nats-publish-conns, its own connection for control among them; 0: its automatic default, one more per 200 calls), and as many baseline and floor publishers as it uses")
	fs.IntVar(&cfg.Ingests, "ingests", cfg.Ingests, "mode inproc on the in-process stack: ingest nodes, each with its own NATS connection, the calls spread over them (also the baseline's and the floor's publisher connections); nats-server caches subject matches per publishing connection, up to 512 subjects, two per two-leg call")
	fs.IntVar(&cfg.WorkerCapacity, "worker-capacity", cfg.WorkerCapacity, "in-process stack: calls per worker (0: enough for -calls plus 10%)")
	fs.BoolVar(&cfg.Secure, "secure", false, "in-process stack: NATS as in production, TLS and every component (and the tester) signed in with its own least-privilege identity")
	fs.IntVar(&cfg.Shards, "shards", cfg.Shards, "pacer goroutines (0: one per CPU)")
	fs.DurationVar(&cfg.Tick, "tick", cfg.Tick, "pacer tick")
	fs.IntVar(&cfg.StartConcurrency, "start-concurrency", cfg.StartConcurrency, "call setups in flight at once")
	fs.DurationVar(&cfg.Settle, "settle", cfg.Settle, "how long to wait for the workers' reports after the last call")
	fs.DurationVar(&cfg.Progress, "progress", cfg.Progress, "progress line interval (0: none)")
	fs.Func("pid", "also watch the CPU and memory of these processes (comma-separated pids), e.g. a remote stack's on this machine", func(s string) error {
		for _, p := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(p))
			if err != nil {
				return fmt.Errorf("pid %q is not a number", p)
			}
			cfg.PIDs = append(cfg.PIDs, n)
		}
		return nil
	})
	fs.Float64Var(&cfg.MaxLoss, "max-loss", cfg.MaxLoss, "fail if lost+unaccounted frames exceed this ratio of those sent (0: none may be lost; negative: unchecked)")
	fs.DurationVar(&cfg.MaxP99, "max-p99", cfg.MaxP99, "fail if the p99 frame latency exceeds this (0: unchecked)")
	fs.Float64Var(&cfg.MaxP99Ratio, "max-p99-ratio", cfg.MaxP99Ratio, "fail if callrouter's p99 exceeds this multiple of the baseline's (needs -baseline; 0: unchecked)")
	fs.Float64Var(&cfg.MaxRSSPerCall, "max-rss-per-call", cfg.MaxRSSPerCall, "fail if callrouter's max resident memory exceeds the baseline's by more than this many KB (1,000 bytes) per concurrent call; the median of the rounds with -rounds (needs -baseline; 0: unchecked)")
	fs.Float64Var(&cfg.MaxRefused, "max-refused", cfg.MaxRefused, "fail if more than this ratio of call setups were refused or failed (negative: unchecked)")
	return fs
}
