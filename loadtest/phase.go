package loadtest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/nats-io/nats.go"
)

// Phase paths, as the report names them.
const (
	baselinePath = "raw NATS publishers → per-call subscribers"
	inprocPath   = "in-process ingest.Node → NATS → router-placed workers"
	sipPath      = "SIP UAC + RTP → SIP ingest → NATS → router-placed workers"
	whipPath     = "WHIP client (pion) → WebRTC ingest → NATS → router-placed workers"
	ahPath       = "AudioHook client (WebSocket, 200 ms PCMU) → AudioHook ingest → NATS → router-placed workers"
	twPath       = "Twilio Media Streams (WebSocket, 20 ms μ-law) → Twilio ingest → NATS → router-placed workers"
)

// callrouterPaths names the callrouter phase of each mode.
var callrouterPaths = map[string]string{ModeInproc: inprocPath, ModeSIP: sipPath, ModeWHIP: whipPath, ModeAudioHook: ahPath, ModeTwilio: twPath}

// phase runs the configured load against one target and measures it; it also returns the
// latency histogram, for merging rounds.
func (r *runner) phase(ctx context.Context, name, what string) (PhaseReport, *hdr.Histogram, error) {
	pc := PhaseReport{Name: name, Target: what}
	col := newCollector(r.cfg.Tenant, time.Now(), r.timelineInterval(), 4*r.cfg.Shards)
	e, err := r.ends(name, col)
	defer e.close()
	if err != nil {
		return pc, nil, err
	}
	freeMemory() // the phase's memory is its own, not what the previous phase left
	watch := r.watchProcesses()
	start, sched0 := time.Now(), sampleSched()
	ld := &load{r: r, col: col, tgt: e.tgt, prefix: r.id + name[:1]}
	ld.pacer = newPacer(r.cfg.Shards, time.Duration(float64(frame.Duration)/r.cfg.Speed), r.cfg.Tick, col)
	ld.pacer.start()
	stopProgress := r.progress(name, ld, watch, col, start)
	ld.drive(ctx)
	ld.pacer.stop()
	ld.starts.Wait()
	pc.SchedWait = sampleSched().waitsSince(sched0)
	pc.Duration = round3(time.Since(start).Seconds())
	pc.PeakCalls = int(ld.peak.Load())

	want := ld.completed.Load()
	r.settle(e, col, want)
	e.finish(&pc)
	stopProgress()
	pc.Processes = watch.stop()
	pc.Machine = watch.machine(pc.Processes)
	lat := col.latency()
	r.account(&pc, ld, col, lat, want)
	if got := col.settled.Load(); e.events == nil && got < want {
		pc.Errors = append(pc.Errors, fmt.Sprintf("%d of %d calls had no last report (a stop other than released, superseded or migrated) from the worker side within %v",
			want-got, want, r.cfg.Settle))
	}
	return pc, lat, nil
}

// timelineInterval is a phase's timeline step: a second, or longer for phases over 4 minutes.
func (r *runner) timelineInterval() time.Duration {
	if est := r.estimate(); est > 240*time.Second {
		return (est / 240).Round(time.Second)
	}
	return time.Second
}

// phaseEnds are a phase's two ends: the target the calls go to, and how the worker side's
// reports come back (the in-process probe's sink, or a remote stack's events).
type phaseEnds struct {
	tgt    Target
	events *eventSink // a remote stack's events; nil in-process
	detach func()     // the in-process probe sink
	sip    *sipTarget
	whip   *whipTarget
	ws     wsTarget // AudioHook or Twilio
	floor  *floorTarget
}

// ends builds the phase's target and the way back of its reports.
func (r *runner) ends(name string, col *Collector) (*phaseEnds, error) {
	e := &phaseEnds{}
	switch name {
	case "baseline":
		rt, err := r.baselineTarget(col)
		e.tgt = rt
		return e, err
	case "floor":
		ft, err := r.floorTarget(col)
		if ft != nil {
			e.tgt, e.floor = ft, ft
		}
		return e, err
	}
	if err := r.reportsBack(e, col); err != nil {
		return e, err
	}
	return e, r.callrouterTarget(e, col)
}

// baselineTarget connects the baseline's publisher and its subscriber connections.
func (r *runner) baselineTarget(col *Collector) (*rawTarget, error) {
	pubs, err := r.publishers("loadtest baseline publisher")
	if err != nil {
		return nil, err
	}
	rt := &rawTarget{pubs: pubs, col: col, pending: BaselinePendingMsgs}
	for i := 0; i < max(1, r.cfg.Workers); i++ {
		nc, err := r.dial(fmt.Sprintf("loadtest baseline subscriber %d", i+1))
		if err != nil {
			return nil, err
		}
		rt.subs = append(rt.subs, nc)
	}
	return rt, nil
}

// floorTarget connects the floor's publisher and its subscriber connections, as many as the
// baseline's, each with its one wildcard subscription.
func (r *runner) floorTarget(col *Collector) (*floorTarget, error) {
	pubs, err := r.publishers("loadtest floor publisher")
	if err != nil {
		return nil, err
	}
	var subs []*nats.Conn
	for i := 0; i < max(1, r.cfg.Workers); i++ {
		nc, err := r.dial(fmt.Sprintf("loadtest floor subscriber %d", i+1))
		if err != nil {
			return nil, err
		}
		subs = append(subs, nc)
	}
	return newFloorTarget(pubs, subs, r.cfg.Tenant, col, BaselinePendingMsgs, r.cfg.Calls)
}

// publishConns is how many connections the in-process ingest node publishes the run's calls on.
func (r *runner) publishConns() int {
	if r.local != nil && r.local.Publishers > 1 {
		return r.local.Publishers
	}
	return 1
}

// publishers connects the raw phases' publishers, one per publishing connection of the
// callrouter phase (-ingests nodes, -publish-conns each): the same number on both sides, since
// nats-server caches subject matches per publishing connection.
func (r *runner) publishers(name string) ([]*nats.Conn, error) {
	var pubs []*nats.Conn
	k := max(1, r.cfg.Ingests) * r.publishConns()
	for i := range k {
		n := name
		if k > 1 {
			n = fmt.Sprintf("%s %d", name, i+1)
		}
		nc, err := r.dial(n)
		if err != nil {
			return nil, err
		}
		pubs = append(pubs, nc)
	}
	return pubs, nil
}

// reportsBack attaches the collector to the in-process workers' probe, or subscribes to a remote
// stack's worker events.
func (r *runner) reportsBack(e *phaseEnds, col *Collector) error {
	if r.local != nil && r.local.Attach != nil {
		detach, err := r.local.Attach(r.cfg.Tenant, col)
		e.detach = detach
		return err
	}
	nc, err := r.dial("loadtest events")
	if err != nil {
		return err
	}
	prefix := r.id
	switch r.cfg.Mode {
	case ModeWHIP, ModeAudioHook, ModeTwilio:
		prefix = "" // the endpoint names its calls; the tenant should be the run's own
	}
	e.events, err = subscribeEvents(nc, r.cfg.Tenant, prefix, col)
	return err
}

// callrouterTarget is the mode's client: a SIP UAC, a WHIP client, or the harness's ingest node.
func (r *runner) callrouterTarget(e *phaseEnds, col *Collector) error {
	switch r.cfg.Mode {
	case ModeSIP:
		st, err := newSIPTarget(r.sipAddr, r.cfg.Tenant, r.cfg.Impair, col, r.cfg.HangupDelay, r.cfg.rtpSocket())
		if err != nil {
			return err
		}
		e.sip, e.tgt = st, st
	case ModeWHIP:
		loopback := r.inProcess() || strings.Contains(r.whipURL, "//127.") || strings.Contains(r.whipURL, "//localhost")
		wt, err := newWHIPTarget(r.whipURL, r.cfg.WHIPToken, loopback, r.cfg.HangupDelay)
		if err != nil {
			return err
		}
		e.whip, e.tgt = wt, wt
	case ModeAudioHook:
		at, err := newAudioHookTarget(r.streams.audiohook, r.streams.ahKey, r.streams.ahSecret, r.cfg.HangupDelay)
		if err != nil {
			return err
		}
		e.ws, e.tgt = at, at
	case ModeTwilio:
		nc, err := r.dial("loadtest twilio placements")
		if err != nil {
			return err
		}
		tt, err := newTwilioTarget(r.streams.twilio, r.streams.twToken, r.cfg.Tenant, nc, r.cfg.HangupDelay)
		if err != nil {
			return err
		}
		e.ws, e.tgt = tt, tt
	default:
		e.tgt = r.local.Ingest
	}
	return nil
}

// reported is how many calls the worker side has reported, each once and only by its last report:
// a call handed over (released, superseded, migrated) reports again from its next worker.
func (e *phaseEnds) reported(col *Collector) int64 {
	if e.events != nil {
		return e.events.calls()
	}
	return col.settled.Load()
}

// finish hangs the clients up (every BYE answered, every session deleted), records what they
// sent, and merges a remote stack's reports.
func (e *phaseEnds) finish(pc *PhaseReport) {
	if e.sip != nil {
		e.sip.close()
		pc.Impairments = map[string]int64{"rtp_sent": e.sip.sent.Load(), "dropped": e.sip.dropped.Load(), "delayed": e.sip.delayed.Load(),
			"reordered": e.sip.reordered.Load(), "send_failed": e.sip.failed.Load()}
	}
	if e.whip != nil {
		e.whip.close()
		pc.Impairments = map[string]int64{"rtp_sent": e.whip.sent.Load()}
	}
	if e.ws != nil {
		e.ws.close()
		pc.Impairments = map[string]int64{"ws_messages_sent": e.ws.messages()}
	}
	if e.events != nil {
		e.events.finish()
	}
}

// close releases what ends set up; it may follow finish.
func (e *phaseEnds) close() {
	if e.whip != nil {
		e.whip.close()
	}
	if e.sip != nil {
		e.sip.close()
	}
	if e.ws != nil {
		e.ws.close()
	}
	if e.events != nil {
		e.events.close()
	}
	if e.floor != nil {
		e.floor.close()
	}
	if e.detach != nil {
		e.detach()
	}
}

// watchProcesses samples the CPU and memory of the tester and of the processes given with -pid.
func (r *runner) watchProcesses() *procWatch {
	pids := []int{os.Getpid()}
	notes := map[int]string{os.Getpid(): "the load tester"}
	if r.inProcess() {
		notes[os.Getpid()] = "load tester + in-process callrouter + nats-server (one process)"
	}
	pids = append(pids, r.cfg.PIDs...)
	watch := newProcWatch(pids, notes)
	watch.run(time.Second)
	return watch
}

// settle waits up to the settle time for the worker side to report every call that was set up.
func (r *runner) settle(e *phaseEnds, col *Collector, want int64) {
	deadline := time.Now().Add(r.cfg.Settle)
	for e.reported(col) < want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}

// account fills the phase report from the load's counters and the collector.
func (r *runner) account(pc *PhaseReport, ld *load, col *Collector, lat *hdr.Histogram, completed int64) {
	pc.Started = int(ld.started.Load())
	pc.Completed = int(completed)
	pc.Refused = int(ld.refused.Load())
	pc.Failed = int(ld.failed.Load())
	pc.Errors = ld.errorList()
	col.mu.Lock()
	pc.Setup = summarize(col.setup)
	col.mu.Unlock()
	pc.Latency = summarize(lat)
	pc.Curve = curve(lat)
	pc.Totals, pc.WorstLegs = col.finish(50)
	pc.LossRatio = pc.Totals.LossRatio()
	pc.Timeline = col.timeline()
	pc.PacerLate = round3(float64(ld.pacer.lateNS.Load()) / 1e6)
	fl := ld.pacer.lateness(0.5, 0.99)
	pc.FrameLate = [2]float64{round3(float64(fl[0]) / 1e6), round3(float64(fl[1]) / 1e6)}
	if pc.Duration > 0 {
		pc.FramesRate = round3(float64(pc.Totals.Sent) / pc.Duration)
	}
	if pc.PacerLate > 100 {
		pc.Warnings = append(pc.Warnings, fmt.Sprintf("the tester fell %.0f ms behind its schedule at worst: the machine was short of CPU "+
			"(%.2f busy cores, %.2f of them other work), so tails reflect the machine as much as the system under test", pc.PacerLate,
			pc.Machine.BusyCores, pc.Machine.BackgroundCores))
	}
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
