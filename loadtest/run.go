package loadtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"runtime"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// Deps are a run's collaborators.
type Deps struct {
	Log      zerolog.Logger // the run's own log
	StackLog zerolog.Logger // the in-process stack's log
	Progress io.Writer      // progress lines; nil for none
	Command  string         // the command line, recorded in the report
	// Harness runs callrouter's services in this process (inproc.Start). Without it only
	// black-box runs take place: sip, whip and baseline against a remote NATS URL.
	Harness Harness
	// NATS are the options the tester's own connections to a remote -nats need: credentials and
	// TLS (cmd/loadtest's -nats-creds, -nats-nkey, -nats-tls-*). An in-process stack brings its own.
	NATS []nats.Option
}

// Run carries out a load test and returns its report. The error is for a run that could not
// take place (bad inputs, no NATS); a run that took place but failed its thresholds returns a
// report with Pass false.
func Run(ctx context.Context, cfg Config, d Deps) (*Report, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.Mode = canonicalMode(cfg.Mode)
	recs, err := LoadInputs(cfg.Inputs, cfg.Legs)
	if err != nil {
		return nil, err
	}
	if err := prepare(cfg.Mode, recs); err != nil {
		return nil, err
	}
	r := &runner{cfg: cfg, d: d, recs: recs, id: runID()}
	for _, rec := range recs {
		r.legs = max(r.legs, len(rec.Frames))
	}
	if r.cfg.Shards == 0 {
		r.cfg.Shards = runtime.GOMAXPROCS(0)
	}
	return r.run(ctx)
}

// prepare makes the recordings sendable in the mode: G.711 for SIP and WHIP, μ-law for AudioHook
// and Twilio; one leg for WHIP, at most two (external/internal, inbound/outbound) for AudioHook
// and Twilio.
func prepare(mode string, recs []Recording) error {
	maxLegs := 0
	switch mode {
	case ModeWHIP:
		maxLegs = 1 // a WHIP session carries one leg
	case ModeAudioHook, ModeTwilio:
		maxLegs = 2
	case ModeSIP:
	default:
		return nil
	}
	for i := range recs {
		if maxLegs > 0 && len(recs[i].Frames) > maxLegs {
			recs[i].Frames = recs[i].Frames[:maxLegs]
		}
		if err := toG711(&recs[i]); err != nil {
			return err
		}
		if (mode == ModeAudioHook || mode == ModeTwilio) && recs[i].Codec != frame.CodecPCMU {
			return fmt.Errorf("loadtest: %s: %s mode sends μ-law; this is %s (sox in.wav -e mu-law out.wav)", recs[i].Name, mode, recs[i].Codec)
		}
	}
	return nil
}

func runID() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

type runner struct {
	cfg  Config
	d    Deps
	recs []Recording
	id   string
	legs int // the most legs of any recording

	local   *Local     // what the harness runs for this run; nil for a black-box run
	sipAddr string     // the SIP ingest the calls go to (SIP mode)
	whipURL string     // the WHIP endpoint the calls go to (WHIP mode)
	streams streamEnds // the AudioHook or Twilio endpoint and credentials
	url     string
	conns   []*nats.Conn
}

func (r *runner) run(ctx context.Context) (*Report, error) {
	rep := r.newReport()
	if err := r.connect(ctx); err != nil {
		return nil, err
	}
	defer r.close()
	if r.inProcess() {
		rep.Config.Stack = fmt.Sprintf("in-process (%d workers, embedded nats-server)", r.cfg.Workers)
		if r.cfg.Secure {
			rep.Config.Stack = fmt.Sprintf("in-process (%d workers, embedded nats-server with TLS and per-role permissions)", r.cfg.Workers)
		}
		if r.cfg.Ingests > 1 {
			rep.Config.Stack += fmt.Sprintf(", %d ingest nodes and baseline publishers", r.cfg.Ingests)
		}
		if n := r.publishConns(); n > 1 {
			rep.Config.Stack += fmt.Sprintf(", %d publishing connections of the ingest and of the baseline", n)
		}
	} else {
		rep.Config.Stack = "remote " + r.url
	}
	if err := r.phases(ctx, rep); err != nil {
		return nil, err
	}
	rep.compare()
	rep.verdict(&r.cfg)
	if ctx.Err() != nil {
		rep.Pass = false
		rep.Failures = append(rep.Failures, "interrupted")
	}
	return rep, nil
}

// newReport starts the report with what the run is about to do.
func (r *runner) newReport() *Report {
	fps := float64(r.cfg.Calls*r.legs) * 50 * r.cfg.Speed
	rep := &Report{Started: time.Now(), Machine: describeMachine(), Config: ReportConfig{Mode: r.cfg.Mode, Rounds: r.cfg.Rounds, Calls: r.cfg.Calls, Legs: r.legs,
		Ramp: r.cfg.Ramp, CallDuration: durOr(r.cfg.CallDuration, "whole recording"), RunTime: durOr(r.cfg.RunTime, "each call once"),
		Speed: r.cfg.Speed, FramesPerSec: fps, Command: r.d.Command}}
	for _, rec := range r.recs {
		rep.Config.Inputs = append(rep.Config.Inputs, fmt.Sprintf("%s (%s %d Hz, %d legs, %.1f s)", rec.Name, rec.Codec, rec.Rate,
			len(rec.Frames), float64(rec.Len())/50))
	}
	return rep
}

// phases runs the baseline alone, or alternates baseline and callrouter phases over the rounds
// so that a shared machine's changing background load falls on both.
func (r *runner) phases(ctx context.Context, rep *Report) error {
	if r.cfg.Mode == ModeBaseline {
		p, _, err := r.phase(ctx, "baseline", baselinePath)
		if err != nil {
			return err
		}
		rep.Phases = append(rep.Phases, p)
		return nil
	}
	var base, floor, cr []phaseResult
	for round := 0; round < r.cfg.Rounds && ctx.Err() == nil; round++ {
		if r.cfg.Baseline {
			p, h, err := r.phase(ctx, "baseline", baselinePath)
			if err != nil {
				return err
			}
			base = append(base, phaseResult{p, h})
		}
		if r.cfg.Floor && ctx.Err() == nil {
			p, h, err := r.phase(ctx, "floor", floorPath)
			if err != nil {
				return err
			}
			floor = append(floor, phaseResult{p, h})
		}
		if ctx.Err() != nil {
			break
		}
		p, h, err := r.phase(ctx, "callrouter", callrouterPaths[r.cfg.Mode])
		if err != nil {
			return err
		}
		cr = append(cr, phaseResult{p, h})
		if len(base) > round {
			rr := RoundReport{Round: round + 1, Baseline: base[round].p.Latency, Callrouter: p.Latency,
				P99Ratio: ratio(p.Latency.P99, base[round].p.Latency.P99), RSS: rssAbove(&base[round].p, &p)}
			if len(floor) > round {
				f := floor[round].p.Latency
				rr.Floor, rr.FloorP99Ratio = &f, ratio(p.Latency.P99, f.P99)
			}
			rep.Rounds = append(rep.Rounds, rr)
		}
	}
	if len(base) > 0 {
		rep.Phases = append(rep.Phases, mergePhases(base))
	}
	if len(floor) > 0 {
		rep.Phases = append(rep.Phases, mergePhases(floor))
	}
	if len(cr) > 0 {
		rep.Phases = append(rep.Phases, mergePhases(cr))
	}
	return nil
}

// compare sets the callrouter / baseline ratios when both phases ran, and the callrouter /
// floor ratios when the floor ran too.
func (rep *Report) compare() {
	b, c, f := rep.phase("baseline"), rep.phase("callrouter"), rep.phase("floor")
	if b == nil || c == nil {
		return
	}
	rep.Ratio = &Ratio{P50: ratio(c.Latency.P50, b.Latency.P50), P90: ratio(c.Latency.P90, b.Latency.P90), P99: ratio(c.Latency.P99, b.Latency.P99),
		CPU: ratio(sumCPU(c.Processes), sumCPU(b.Processes))}
	if f != nil {
		rep.Floor = &Ratio{P50: ratio(c.Latency.P50, f.Latency.P50), P90: ratio(c.Latency.P90, f.Latency.P90), P99: ratio(c.Latency.P99, f.Latency.P99),
			CPU: ratio(sumCPU(c.Processes), sumCPU(f.Processes))}
	}
	rep.RSS = rssAbove(b, c)
	if len(rep.Rounds) > 1 {
		var rs, fs, ms []float64
		for _, rr := range rep.Rounds {
			rs = append(rs, rr.P99Ratio)
			if rr.Floor != nil {
				fs = append(fs, rr.FloorP99Ratio)
			}
			if rr.RSS != nil {
				ms = append(ms, rr.RSS.PerCallKB)
			}
		}
		if rep.RSS != nil && len(ms) > 0 {
			rep.RSS.MedianRoundPerCallKB = median(ms)
		}
		rep.Ratio.MedianRoundP99 = median(rs)
		if rep.Floor != nil && len(fs) > 0 {
			rep.Floor.MedianRoundP99 = median(fs)
		}
	}
}

// phase returns the phase with that name, or nil.
func (rep *Report) phase(name string) *PhaseReport {
	for i := range rep.Phases {
		if rep.Phases[i].Name == name {
			return &rep.Phases[i]
		}
	}
	return nil
}

func sumCPU(ps []ProcUsage) float64 {
	s := 0.0
	for _, p := range ps {
		s += p.CPUCores
	}
	return s
}

func durOr(d time.Duration, zero string) string {
	if d == 0 {
		return zero
	}
	return d.String()
}

// connect joins a remote callrouter as a black-box client, or has the harness start what the
// run needs in this process: a whole callrouter (no NATS URL), or an ingest node on the remote
// NATS (ModeInproc with a URL).
func (r *runner) connect(ctx context.Context) error {
	if r.cfg.NATSURL != "" && r.cfg.Mode != ModeInproc {
		r.url, r.sipAddr, r.whipURL = r.cfg.NATSURL, r.cfg.SIP, r.cfg.WHIP
		r.streams = streamEnds{audiohook: r.cfg.AudioHook, ahKey: r.cfg.AudioHookKey, ahSecret: r.cfg.AudioHookSecret,
			twilio: r.cfg.Twilio, twToken: r.cfg.TwilioToken}
		return nil
	}
	if r.d.Harness == nil {
		return fmt.Errorf("loadtest: mode %s without -nats runs callrouter in this process, and this build has no in-process harness", r.cfg.Mode)
	}
	l, err := r.d.Harness(ctx, LocalConfig{Mode: r.cfg.Mode, RunID: r.id, NATSURL: r.cfg.NATSURL, Tenant: r.cfg.Tenant, Calls: r.cfg.Calls, Legs: max(1, r.legs),
		Workers: r.cfg.Workers, Ingests: r.cfg.Ingests, PublishConns: r.cfg.PublishConns, WorkerCapacity: r.cfg.WorkerCapacity, WHIPReadCoalesce: r.cfg.WHIPReadCoalesce, Secure: r.cfg.Secure, Log: r.d.Log, StackLog: r.d.StackLog})
	if err != nil {
		return err
	}
	r.local, r.url, r.sipAddr, r.whipURL = l, l.URL, l.SIP, l.WHIP
	r.streams = streamEnds{audiohook: l.AudioHook, ahKey: l.AudioHookKey, ahSecret: l.AudioHookSecret, twilio: l.Twilio, twToken: l.TwilioToken}
	return nil
}

// inProcess reports whether the whole callrouter runs in this process.
func (r *runner) inProcess() bool { return r.local != nil && r.local.Stack }

// dial connects to the run's NATS as a plain client.
func (r *runner) dial(name string) (*nats.Conn, error) {
	log := r.d.Log
	opts := []nats.Option{nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectBufSize(8 << 20), nats.PingInterval(5 * time.Second), nats.MaxPingsOutstanding(3),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			ev := log.Warn().Err(err)
			if sub != nil {
				ev = ev.Str("subject", sub.Subject)
			}
			ev.Msg("nats async error")
		})}
	if r.inProcess() {
		opts = append(opts, r.local.Options...) // credentials and TLS of a secure in-process stack
	} else {
		opts = append(opts, r.d.NATS...) // a remote NATS: what the -nats-* flags give
	}
	nc, err := nats.Connect(r.url, opts...)
	if err != nil {
		return nil, fmt.Errorf("loadtest: connect %s: %w", r.url, err)
	}
	r.conns = append(r.conns, nc)
	return nc, nil
}

// close closes the tester's connections, then what the harness started (an in-process server
// goes after the connections to it).
func (r *runner) close() {
	for _, nc := range r.conns {
		nc.Close()
	}
	if r.local != nil {
		r.local.Close()
	}
}
