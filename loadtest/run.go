package loadtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/callrouter/callrouter/loadtest/probe"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// Deps are a run's collaborators.
type Deps struct {
	Log      zerolog.Logger // the run's own log
	StackLog zerolog.Logger // the in-process stack's log
	Progress io.Writer      // progress lines; nil for none
	Command  string         // the command line, recorded in the report
}

// Run carries out a load test and returns its report. The error is for a run that could not
// take place (bad inputs, no NATS); a run that took place but failed its thresholds returns a
// report with Pass false.
func Run(ctx context.Context, cfg Config, d Deps) (*Report, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	recs, err := LoadInputs(cfg.Inputs, cfg.Legs)
	if err != nil {
		return nil, err
	}
	if cfg.Mode == ModeSIP || cfg.Mode == ModeWHIP {
		for i := range recs {
			if cfg.Mode == ModeWHIP && len(recs[i].Frames) > 1 {
				recs[i].Frames = recs[i].Frames[:1] // a WHIP session carries one leg
			}
			if err := toG711(&recs[i]); err != nil {
				return nil, err
			}
		}
	}
	r := &runner{cfg: cfg, d: d, recs: recs, id: runID()}
	if r.cfg.Shards == 0 {
		r.cfg.Shards = runtime.GOMAXPROCS(0)
	}
	return r.run(ctx)
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

	st      *stack.Stack
	node    *ingest.Node // the ingest the calls go through (NATS mode)
	sipAddr string       // the SIP ingest the calls go to (SIP mode)
	whipURL string       // the WHIP endpoint the calls go to (WHIP mode)
	url     string
	conns   []*nats.Conn
	stop    func() // stops what the runner started
}

func (r *runner) run(ctx context.Context) (*Report, error) {
	legs, fps := 0, 0.0
	for _, rec := range r.recs {
		legs = max(legs, len(rec.Frames))
	}
	fps = float64(r.cfg.Calls*legs) * 50 * r.cfg.Speed
	rep := &Report{Started: time.Now(), Machine: describeMachine(), Config: ReportConfig{Mode: r.cfg.Mode, Rounds: r.cfg.Rounds, Calls: r.cfg.Calls, Legs: legs,
		Ramp: r.cfg.Ramp, CallDuration: durOr(r.cfg.CallDuration, "whole recording"), RunTime: durOr(r.cfg.RunTime, "each call once"),
		Speed: r.cfg.Speed, FramesPerSec: fps, Command: r.d.Command}}
	for _, rec := range r.recs {
		rep.Config.Inputs = append(rep.Config.Inputs, fmt.Sprintf("%s (%s %d Hz, %d legs, %.1f s)", rec.Name, rec.Codec, rec.Rate,
			len(rec.Frames), float64(rec.Len())/50))
	}
	if err := r.connect(ctx); err != nil {
		return nil, err
	}
	defer r.close()
	if r.st != nil {
		rep.Config.Stack = fmt.Sprintf("in-process (%d workers, embedded nats-server)", r.cfg.Workers)
	} else {
		rep.Config.Stack = "remote " + r.url
	}
	if r.cfg.Mode == ModeBaseline {
		p, _, err := r.phase(ctx, "baseline", baselinePath)
		if err != nil {
			return nil, err
		}
		rep.Phases = append(rep.Phases, p)
	} else {
		// Alternate the phases, so that a shared machine's changing background load falls on both.
		var base, cr []phaseResult
		for round := 0; round < r.cfg.Rounds && ctx.Err() == nil; round++ {
			if r.cfg.Baseline {
				p, h, err := r.phase(ctx, "baseline", baselinePath)
				if err != nil {
					return nil, err
				}
				base = append(base, phaseResult{p, h})
			}
			if ctx.Err() != nil {
				break
			}
			path := map[string]string{ModeNATS: callrouterPath, ModeSIP: sipPath, ModeWHIP: whipPath}[r.cfg.Mode]
			p, h, err := r.phase(ctx, "callrouter", path)
			if err != nil {
				return nil, err
			}
			cr = append(cr, phaseResult{p, h})
			if len(base) > round {
				rep.Rounds = append(rep.Rounds, RoundReport{Round: round + 1, Baseline: base[round].p.Latency, Callrouter: p.Latency,
					P99Ratio: ratio(p.Latency.P99, base[round].p.Latency.P99)})
			}
		}
		if len(base) > 0 {
			rep.Phases = append(rep.Phases, mergePhases(base))
		}
		if len(cr) > 0 {
			rep.Phases = append(rep.Phases, mergePhases(cr))
		}
	}
	if len(rep.Phases) == 2 {
		b, c := rep.Phases[0], rep.Phases[1]
		rep.Ratio = &Ratio{P50: ratio(c.Latency.P50, b.Latency.P50), P90: ratio(c.Latency.P90, b.Latency.P90), P99: ratio(c.Latency.P99, b.Latency.P99),
			CPU: ratio(sumCPU(c.Processes), sumCPU(b.Processes))}
		if len(rep.Rounds) > 1 {
			var rs []float64
			for _, rr := range rep.Rounds {
				rs = append(rs, rr.P99Ratio)
			}
			rep.Ratio.MedianRoundP99 = median(rs)
		}
	}
	rep.verdict(&r.cfg)
	if ctx.Err() != nil {
		rep.Pass = false
		rep.Failures = append(rep.Failures, "interrupted")
	}
	return rep, nil
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

// connect starts the in-process stack, or joins a remote one with an ingest node of its own.
func (r *runner) connect(ctx context.Context) error {
	log := r.d.Log
	if r.cfg.NATSURL == "" {
		wc := worker.DefaultConfig()
		wc.Processors = []string{"accounting", probe.ProcessorName}
		wc.Capacity = r.cfg.WorkerCapacity
		if wc.Capacity == 0 {
			wc.Capacity = (r.cfg.Calls+r.cfg.Workers-1)/r.cfg.Workers + r.cfg.Calls/10 + 10
		}
		st, err := stack.Start(stack.Config{Workers: r.cfg.Workers, Worker: wc, Log: r.d.StackLog})
		if err != nil {
			return fmt.Errorf("loadtest: in-process stack: %w", err)
		}
		r.st, r.node, r.url = st, st.Ingest, st.URL
		deadline := time.Now().Add(15 * time.Second)
		for len(st.Routers[0].Workers()) < r.cfg.Workers {
			if time.Now().After(deadline) || ctx.Err() != nil {
				_ = st.Close()
				return errors.New("loadtest: in-process workers did not become visible to the router in 15s")
			}
			time.Sleep(20 * time.Millisecond)
		}
		r.stop = func() { _ = st.Close() }
		if r.cfg.Mode == ModeSIP {
			legs := 1
			for _, rec := range r.recs {
				legs = max(legs, len(rec.Frames))
			}
			addr, stopSIP, err := startSIP(st.Ingest, r.cfg.Tenant, r.cfg.Calls, legs, r.d.StackLog)
			if err != nil {
				_ = st.Close()
				return err
			}
			r.sipAddr = addr
			r.stop = func() { stopSIP(); _ = st.Close() }
		}
		if r.cfg.Mode == ModeWHIP {
			u, stopWHIP, err := startWHIP(st.Ingest, r.cfg.Tenant, r.cfg.Calls, r.d.StackLog)
			if err != nil {
				_ = st.Close()
				return err
			}
			r.whipURL = u
			r.stop = func() { stopWHIP(); _ = st.Close() }
		}
		return nil
	}
	switch r.cfg.Mode {
	case ModeSIP:
		r.url, r.sipAddr = r.cfg.NATSURL, r.cfg.SIP
		return nil
	case ModeWHIP:
		r.url, r.whipURL = r.cfg.NATSURL, r.cfg.WHIP
		return nil
	}
	r.url = r.cfg.NATSURL
	nc, err := r.dial("loadtest ingest " + r.id)
	if err != nil {
		return err
	}
	ic := ingest.DefaultConfig()
	ic.ID = "loadtest-" + r.id
	ic.DrainTimeout = time.Second
	n, err := ingest.New(ic, ingest.Deps{NC: nc, Log: log})
	if err != nil {
		return err
	}
	nctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = n.Run(nctx)
	}()
	r.node = n
	r.stop = func() {
		cancel()
		<-done
		n.Close()
	}
	return nil
}

func (r *runner) dial(name string) (*nats.Conn, error) {
	bc := bus.DefaultConfig()
	bc.URL, bc.Name = r.url, name
	nc, err := bus.Connect(bc, r.d.Log)
	if err != nil {
		return nil, fmt.Errorf("loadtest: %w", err)
	}
	r.conns = append(r.conns, nc)
	return nc, nil
}

func (r *runner) close() {
	if r.st == nil && r.stop != nil {
		r.stop() // the remote mode's ingest node, before its connection
	}
	for _, nc := range r.conns {
		nc.Close()
	}
	if r.st != nil {
		r.stop() // the in-process stack and its server, after the connections to it
	}
}

// Phase paths, as the report names them.
const (
	baselinePath   = "raw NATS publishers → per-call subscribers"
	callrouterPath = "ingest.Node → NATS → router-placed workers"
	sipPath        = "SIP UAC + RTP → SIP ingest → NATS → router-placed workers"
	whipPath       = "WHIP client (pion) → WebRTC ingest → NATS → router-placed workers"
)

// phase runs the configured load against one target and measures it; it also returns the
// latency histogram, for merging rounds.
func (r *runner) phase(ctx context.Context, name, what string) (PhaseReport, *hdr.Histogram, error) {
	interval := time.Second
	if est := r.estimate(); est > 240*time.Second {
		interval = (est / 240).Round(time.Second)
	}
	col := newCollector(r.cfg.Tenant, time.Now(), interval, 4*r.cfg.Shards)
	var (
		tgt    target
		events *eventSink
		sipT   *sipTarget
		whipT  *whipTarget
		pc     = PhaseReport{Name: name, Target: what}
	)
	switch name {
	case "baseline":
		pub, err := r.dial("loadtest baseline publisher")
		if err != nil {
			return pc, nil, err
		}
		rt := &rawTarget{pub: pub, col: col, pending: worker.DefaultConfig().PendingMsgs}
		for i := 0; i < max(1, r.cfg.Workers); i++ {
			nc, err := r.dial(fmt.Sprintf("loadtest baseline subscriber %d", i+1))
			if err != nil {
				return pc, nil, err
			}
			rt.subs = append(rt.subs, nc)
		}
		tgt = rt
	default:
		if r.st != nil {
			detach, err := col.attach()
			if err != nil {
				return pc, nil, err
			}
			defer detach()
		} else {
			nc, err := r.dial("loadtest events")
			if err != nil {
				return pc, nil, err
			}
			prefix := r.id
			if r.cfg.Mode == ModeWHIP {
				prefix = "" // the WHIP endpoint names its calls; the tenant should be the run's own
			}
			if events, err = subscribeEvents(nc, r.cfg.Tenant, prefix, col); err != nil {
				return pc, nil, err
			}
			defer events.close()
		}
		if r.cfg.Mode == ModeSIP {
			st, err := newSIPTarget(r.sipAddr, r.cfg.Tenant, r.cfg.Impair, col, r.cfg.HangupDelay)
			if err != nil {
				return pc, nil, err
			}
			defer st.close()
			sipT = st
			tgt = st
		} else if r.cfg.Mode == ModeWHIP {
			loopback := r.st != nil || strings.Contains(r.whipURL, "//127.") || strings.Contains(r.whipURL, "//localhost")
			wt, err := newWHIPTarget(r.whipURL, r.cfg.WHIPToken, loopback, r.cfg.HangupDelay)
			if err != nil {
				return pc, nil, err
			}
			defer wt.close()
			whipT = wt
			tgt = wt
		} else {
			tgt = ingestTarget{r.node}
		}
	}
	pids := []int{os.Getpid()}
	notes := map[int]string{os.Getpid(): "the load tester"}
	if r.st != nil {
		notes[os.Getpid()] = "load tester + in-process callrouter + nats-server (one process)"
	}
	pids = append(pids, r.cfg.PIDs...)
	watch := newProcWatch(pids, notes)
	watch.run(time.Second)

	start := time.Now()
	ld := &load{r: r, col: col, tgt: tgt, prefix: r.id + name[:1]}
	ld.pacer = newPacer(r.cfg.Shards, time.Duration(float64(frame.Duration)/r.cfg.Speed), r.cfg.Tick, col)
	ld.pacer.start()
	stopProgress := r.progress(name, ld, watch, col, start)
	ld.drive(ctx)
	ld.pacer.stop()
	ld.starts.Wait()
	pc.Duration = round3(time.Since(start).Seconds())

	// Wait for the worker side to report every call that was set up.
	want := ld.completed.Load()
	deadline := time.Now().Add(r.cfg.Settle)
	for {
		got := col.stopped.Load()
		if events != nil {
			got = events.calls()
		}
		if got >= want || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if sipT != nil {
		sipT.close() // every BYE answered
		pc.Impairments = map[string]int64{"rtp_sent": sipT.sent.Load(), "dropped": sipT.dropped.Load(), "delayed": sipT.delayed.Load(),
			"reordered": sipT.reordered.Load()}
	}
	if whipT != nil {
		whipT.close() // every session deleted
		pc.Impairments = map[string]int64{"rtp_sent": whipT.sent.Load()}
	}
	if events != nil {
		events.finish()
	}
	stopProgress()
	pc.Processes = watch.stop()
	pc.Machine = watch.machine(pc.Processes)

	pc.Started = int(ld.started.Load())
	pc.Completed = int(want)
	pc.Refused = int(ld.refused.Load())
	pc.Failed = int(ld.failed.Load())
	pc.Errors = ld.errorList()
	col.mu.Lock()
	pc.Setup = summarize(col.setup)
	col.mu.Unlock()
	lat := col.latency()
	pc.Latency = summarize(lat)
	pc.Curve = curve(lat)
	pc.Totals, pc.WorstLegs = col.finish(50)
	pc.LossRatio = pc.Totals.LossRatio()
	pc.Timeline = col.timeline()
	pc.PacerLate = round3(float64(ld.pacer.lateNS.Load()) / 1e6)
	if pc.Duration > 0 {
		pc.FramesRate = round3(float64(pc.Totals.Sent) / pc.Duration)
	}
	if pc.PacerLate > 100 {
		pc.Warnings = append(pc.Warnings, fmt.Sprintf("the tester fell %.0f ms behind its schedule at worst: the machine was short of CPU "+
			"(%.2f busy cores, %.2f of them other work), so tails reflect the machine as much as the system under test", pc.PacerLate,
			pc.Machine.BusyCores, pc.Machine.BackgroundCores))
	}
	if got := col.stopped.Load(); events == nil && got < want {
		pc.Errors = append(pc.Errors, fmt.Sprintf("%d of %d calls were not reported by the worker side within %v", want-got, want, r.cfg.Settle))
	}
	return pc, lat, nil
}

// estimate guesses a phase's length, to size the timeline.
func (r *runner) estimate() time.Duration {
	if r.cfg.RunTime > 0 {
		return r.cfg.RunTime
	}
	d := r.cfg.CallDuration
	if d == 0 {
		for _, rec := range r.recs {
			d = max(d, time.Duration(rec.Len())*frame.Duration)
		}
	}
	return time.Duration(float64(d)/r.cfg.Speed) + time.Duration(float64(r.cfg.Calls)/r.cfg.Ramp*float64(time.Second))
}

// progress prints a line every interval until the returned function is called.
func (r *runner) progress(name string, ld *load, w *procWatch, col *Collector, start time.Time) func() {
	if r.d.Progress == nil || r.cfg.Progress == 0 {
		return func() {}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(r.cfg.Progress)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				fmt.Fprintf(r.d.Progress, "[%s %5.0fs] calls active %d started %d refused %d failed %d | frames sent %d received %d lost %d | cpu %.2f cores\n",
					name, time.Since(start).Seconds(), ld.active.Load(), ld.started.Load(), ld.refused.Load(), ld.failed.Load(),
					ld.pacer.sentFrames.Load(), col.received.Load(), col.lost.Load(), w.cores())
			}
		}
	}()
	return func() { close(stop); wg.Wait() }
}

// load drives one phase: it starts calls at the ramp rate up to the concurrency, replaces the
// ones that end while the run time lasts, and hands each set-up call to the pacer.
type load struct {
	r      *runner
	col    *Collector
	tgt    target
	pacer  *pacer
	prefix string

	seq       atomic.Int64
	started   atomic.Int64
	completed atomic.Int64 // set up and handed to the pacer
	refused   atomic.Int64
	failed    atomic.Int64
	active    atomic.Int64
	starts    sync.WaitGroup

	errMu sync.Mutex
	errs  map[string]int
}

func (ld *load) fail(err error) {
	ld.errMu.Lock()
	defer ld.errMu.Unlock()
	if ld.errs == nil {
		ld.errs = map[string]int{}
	}
	msg := err.Error()
	if len(msg) > 200 {
		msg = msg[:200]
	}
	ld.errs[msg]++
}

func (ld *load) errorList() []string {
	ld.errMu.Lock()
	defer ld.errMu.Unlock()
	var out []string
	for m, n := range ld.errs {
		out = append(out, fmt.Sprintf("%d× %s", n, m))
	}
	if len(out) > 20 {
		out = out[:20]
	}
	return out
}

func (ld *load) drive(ctx context.Context) {
	cfg := &ld.r.cfg
	slots := make(chan struct{}, cfg.Calls)
	inflight := make(chan struct{}, cfg.StartConcurrency)
	every := time.Duration(float64(time.Second) / cfg.Ramp)
	var until <-chan time.Time
	if cfg.RunTime > 0 {
		t := time.NewTimer(cfg.RunTime)
		defer t.Stop()
		until = t.C
	}
	allDone := make(chan struct{}, cfg.Calls)
	next := time.Now()
	for n := 0; cfg.RunTime > 0 || n < cfg.Calls; n++ {
		select { // a free call slot
		case slots <- struct{}{}:
		case <-until:
			return
		case <-ctx.Done():
			return
		}
		if d := time.Until(next); d > 0 { // the ramp
			select {
			case <-time.After(d):
			case <-until:
				<-slots
				return
			case <-ctx.Done():
				<-slots
				return
			}
		}
		next = next.Add(every)
		if now := time.Now(); next.Before(now.Add(-time.Second)) {
			next = now // do not burst to catch up after a stall
		}
		inflight <- struct{}{}
		ld.starts.Add(1)
		go func() {
			defer ld.starts.Done()
			ok := ld.startCall(ctx, slots, allDone)
			<-inflight
			if !ok {
				<-slots
				if cfg.RunTime == 0 {
					allDone <- struct{}{}
				}
			}
		}()
	}
	// Each call played once: wait for all of them.
	for i := 0; i < cfg.Calls; i++ {
		select {
		case <-allDone:
		case <-ctx.Done():
			return
		}
	}
}

// startCall sets one call up and hands it to the pacer; false means it was not set up.
func (ld *load) startCall(ctx context.Context, slots chan struct{}, allDone chan struct{}) bool {
	cfg := &ld.r.cfg
	i := ld.seq.Add(1) - 1
	rec := &ld.r.recs[int(i)%len(ld.r.recs)]
	call := fmt.Sprintf("%s-%d", ld.prefix, i)
	spec := rec.Spec(cfg.Tenant, call, map[string]string{"loadtest": ld.r.id, "input": rec.Name})
	ld.started.Add(1)
	t0 := time.Now()
	h, err := ld.tgt.start(ctx, spec)
	if err != nil {
		if ctx.Err() != nil {
			return false
		}
		if wait, temp := ingest.RetryAfter(err); temp {
			ld.refused.Add(1)
			ld.fail(err)
			select { // hold the slot for a while, as a refused caller would
			case <-time.After(min(wait, time.Second)):
			case <-ctx.Done():
			}
			return false
		}
		ld.failed.Add(1)
		ld.fail(err)
		return false
	}
	ld.col.setupTime(time.Since(t0))
	if n, ok := h.(interface{ callID() string }); ok && n.callID() != "" {
		call = n.callID() // the ingest named the call (WHIP): the workers report under that name
	}
	ld.completed.Add(1)
	ld.active.Add(1)
	frames := int(cfg.CallDuration / frame.Duration)
	if frames == 0 {
		frames = rec.Len()
	}
	ld.pacer.add(&stream{call: call, h: h, rec: rec, frames: frames, done: func(st *stream) {
		if st.sendErr != nil && !errors.Is(st.sendErr, ingest.ErrEnded) {
			ld.fail(fmt.Errorf("send: %w", st.sendErr))
		} else if st.sendErr != nil {
			ld.fail(errors.New("call ended by ingest before the recording did (media timeout or no placement)"))
		}
		ld.active.Add(-1)
		<-slots
		if cfg.RunTime == 0 {
			allDone <- struct{}{}
		}
	}})
	return true
}
