package stack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/router"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// The fault tests of issue 12: an ingest stalled past the orphan grace, a worker death no router
// heard of, a router restarted while calls start. Each logs detection time, time to resume and
// the frames missing and duplicated (the README's fault table).

// pump sends one frame on each leg of each call every 20 ms until stopped, counting frames.
type pump struct {
	calls []*ingest.Call
	sent  atomic.Int64 // frames per leg, the same for every call
	stop  chan struct{}
	wg    sync.WaitGroup
}

func play(t *testing.T, calls []*ingest.Call) *pump {
	rec := tone(t, 50)
	p := &pump{calls: calls, stop: make(chan struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for i := 0; ; i++ {
			select {
			case <-p.stop:
				return
			case <-tk.C:
			}
			for _, c := range p.calls {
				for leg := 0; leg < 2; leg++ {
					_ = c.Send(leg, rec.Frames[leg][i%rec.Len()], 0)
				}
			}
			p.sent.Add(1)
		}
	}()
	return p
}

// end stops sending, hangs every call up and waits until no worker holds one.
func (p *pump) end(t *testing.T, s *Stack, extra ...*worker.Worker) int64 {
	close(p.stop)
	p.wg.Wait()
	for _, c := range p.calls {
		c.End("hangup")
	}
	eventually(t, 15*time.Second, "every call to end on its worker", func() bool {
		for _, w := range append(append([]*worker.Worker(nil), s.Workers...), extra...) {
			if w.Calls() != 0 {
				return false
			}
		}
		return true
	})
	return p.sent.Load()
}

// tally is the accounting of one scenario over every leg of every call.
type tally struct {
	missing, duplicated, unaccounted int
	causes                           map[string]int
	notAfter                         int // frames at or after `after` not processed
}

// account compares what the workers processed with the sent frames 0..sent-1 of each leg: a
// frame processed twice is duplicated; a frame never processed is missing, and unaccounted unless
// a gap event with a cause covers it.
func account(t *testing.T, calls []*ingest.Call, sent, after int64) tally {
	t.Helper()
	recorded.mu.Lock()
	defer recorded.mu.Unlock()
	out := tally{causes: map[string]int{}}
	for _, c := range calls {
		for leg := 0; leg < 2; leg++ {
			k := fmt.Sprintf("%s/%d", c.ID(), leg)
			count := map[uint32]int{}
			for _, s := range recorded.seqs[k] {
				count[s]++
			}
			out.duplicated += recorded.dups[k]
			for _, n := range count {
				out.duplicated += n - 1
			}
			for s := int64(0); s < sent; s++ {
				if count[uint32(s)] > 0 {
					continue
				}
				out.missing++
				if s >= after {
					out.notAfter++
				}
				cause := ""
				for _, g := range recorded.gaps[k] {
					if uint32(s) >= g.From && uint32(s) <= g.To {
						cause = g.Cause
					}
				}
				if cause == "" {
					out.unaccounted++
				}
				out.causes[cause]++
			}
		}
	}
	return out
}

func causes(m map[string]int) string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := ""
	for _, k := range keys {
		out += fmt.Sprintf("%s=%d ", k, m[k])
	}
	return out
}

func startCalls(t *testing.T, n *ingest.Node, prefix string, count int) []*ingest.Call {
	t.Helper()
	var calls []*ingest.Call
	for i := 0; i < count; i++ {
		c, err := n.StartCall(context.Background(), tone(t, 1).Spec("acme", fmt.Sprintf("%s-%d", prefix, i), nil))
		if err != nil {
			t.Fatal(err)
		}
		calls = append(calls, c)
	}
	return calls
}

// faultConfig is fastConfig with production overload settings (lag threshold, frame age), so the
// figures hold for a deployed system; on a loaded test machine the routers get more misses.
func faultConfig(t *testing.T) Config {
	cfg := fastConfig(t)
	cfg.Workers = 2
	cfg.Router.Misses = 5
	cfg.Router.ReconcileGrace = 500 * time.Millisecond
	return cfg
}

// routersOnly turns off the ingest's own re-placement after an absence (Config.StrandedAfter),
// so that only the routers' reconciliation can bring the calls back.
func routersOnly(cfg Config) Config {
	cfg.Ingest.StrandedAfter = 0
	return cfg
}

func TestIngestStalledSevenSecondsLosesOnlyWhatItsRingCannotCover(t *testing.T) {
	stall(t, 7*time.Second, routersOnly(faultConfig(t)), true)
}

func TestIngestStalledTwoSecondsLosesNothing(t *testing.T) {
	stall(t, 2*time.Second, routersOnly(faultConfig(t)), true)
}

// TestIngestBackFromStallReplacesItself: the ingest's own check (StrandedAfter) notices its
// absence when it comes back and re-places its calls, whichever of it and the routers' notice
// comes first; every frame is still accounted for.
func TestIngestBackFromStallReplacesItself(t *testing.T) {
	cfg := faultConfig(t)
	cfg.Registry = prometheus.NewRegistry()
	stall(t, 7*time.Second, cfg, false)
	if n := counter(t, cfg.Registry, "callrouter_ingest_absences_total", nil); n < 1 {
		t.Errorf("callrouter_ingest_absences_total %v after a 7 s stall; want the ingest to have noticed its absence", n)
	}
}

// TestIngestStalledSevenSecondsDefaultTimers is the 7 s stall with every timer at its default
// (heartbeats 500 ms, 3 misses, orphan grace 3 s, idle timeout 5 s, reconcile grace 2 s): the
// router reaps the calls while the ingest is silent.
func TestIngestStalledSevenSecondsDefaultTimers(t *testing.T) {
	if testing.Short() {
		t.Skip("15 s")
	}
	stall(t, 7*time.Second, Config{Workers: 2, Worker: testWorkerConfig(), Router: router.DefaultConfig(), Ingest: ingest.DefaultConfig(), Log: testLogger(t)}, false)
}

// stall pauses the ingest for d (past the workers' idle timeout or the routers' orphan grace, so
// its calls are dropped while it is silent) and accounts for every frame. With routerNotice, a
// router must have sent a stranded-placement notice.
func stall(t *testing.T, d time.Duration, cfg Config, routerNotice bool) {
	recorded.reset()
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitWorkers(t, s, 2)
	// Offers say why a call is placed: after the stall, ingest_stall (the worker names the gap so).
	spy, err := nats.Connect(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer spy.Close()
	var mu sync.Mutex
	reasons := map[string]int{}
	if _, err := spy.Subscribe(subjects.WorkerVerb("*", subjects.WorkerVerbOffer), func(m *nats.Msg) {
		var o wire.Offer
		if json.Unmarshal(m.Data, &o) == nil {
			mu.Lock()
			reasons[o.Reason]++
			mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	calls := startCalls(t, s.Ingest, "stall", 4)
	p := play(t, calls)
	eventually(t, 10*time.Second, "a second of audio", func() bool { return p.sent.Load() >= 50 })

	s.Ingest.Pause(true) // no frames, heartbeats or answers leave the node; capture goes on
	pausedAt := time.Now()
	stalled := p.sent.Load()
	eventually(t, 15*time.Second, "the workers to drop the silent calls", func() bool {
		for _, w := range s.Workers {
			if w.Calls() != 0 {
				return false
			}
		}
		return true
	})
	time.Sleep(d - time.Since(pausedAt)) // the rest of the stall
	s.Ingest.Pause(false)
	resumed := time.Now()
	after := p.sent.Load() // frames from here on were sent after the stall

	var detect time.Duration
	eventually(t, 20*time.Second, "every call re-placed after the stall", func() bool {
		if detect == 0 && counter(t, s.Registry(), "callrouter_router_stranded_notices_total", nil) > 0 {
			detect = time.Since(resumed)
		}
		for _, c := range calls {
			if c.Epoch() < 2 {
				return false
			}
		}
		return true
	})
	resume := time.Since(resumed)
	eventually(t, 10*time.Second, "the workers to hold every call again", func() bool {
		n := 0
		for _, w := range s.Workers {
			n += w.Calls()
		}
		return n == len(calls)
	})
	target := p.sent.Load() + 50
	eventually(t, 10*time.Second, "another second of audio", func() bool { return p.sent.Load() >= target })
	sent := p.end(t, s)

	tl := account(t, calls, sent, after)
	t.Logf("ingest stall %v, %d two-leg calls: detected %v after the stall, resumed %v after it; %d frames sent per leg, "+
		"%d missing (causes %s), %d duplicated, %d unaccounted, %d after the stall not processed",
		d, len(calls), detect.Round(time.Millisecond), resume.Round(time.Millisecond), sent, tl.missing, causes(tl.causes),
		tl.duplicated, tl.unaccounted, tl.notAfter)
	if routerNotice && detect == 0 {
		t.Error("no router noticed the stranded placements")
	}
	if tl.unaccounted != 0 || tl.notAfter != 0 || tl.duplicated != 0 {
		t.Errorf("%d frames unaccounted, %d after the stall not processed, %d duplicated; want 0", tl.unaccounted, tl.notAfter, tl.duplicated)
	}
	// The ring holds 5 s: of the stall and the re-placement after it, only what lies before the
	// ring's oldest frame may be lost (of a 7 s stall, at least 1 s).
	perLeg := tl.missing / (2 * len(calls))
	ring := int64(cfg.Ingest.Ring / (20 * time.Millisecond))
	if d < cfg.Ingest.Ring-time.Second && perLeg != 0 {
		t.Errorf("%d frames missing per leg after a %v stall; the %v ring covers it", perLeg, d, cfg.Ingest.Ring)
	}
	if d > cfg.Ingest.Ring+time.Second && (int64(perLeg) < after-stalled-ring || int64(perLeg) > after-stalled) {
		t.Errorf("%d frames missing per leg; want between %d (the stall less the ring) and %d (the stall)", perLeg, after-stalled-ring, after-stalled)
	}
	mu.Lock()
	if reasons[wire.ReasonIngestStall] < len(calls) {
		t.Errorf("offers by reason %v: want one with reason %s per call", reasons, wire.ReasonIngestStall)
	}
	mu.Unlock()
	for cause := range tl.causes {
		if cause != proc.CauseIngestStall && cause != proc.CauseReplacement {
			t.Errorf("missing frames with cause %q; want %s", cause, proc.CauseIngestStall)
		}
	}
}

// TestWorkerDeathNoRouterHeardIsReconciled: the only router is down when a worker dies, so no
// bcast.down is ever published; the router that starts afterwards never knew the worker, and
// finds the calls its ingest still lists on it.
func TestWorkerDeathNoRouterHeardIsReconciled(t *testing.T) {
	recorded.reset()
	cfg := faultConfig(t)
	cfg.Workers = 1
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// The victim runs on a connection of its own, so that it can die without a word.
	nc, err := nats.Connect(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	wc := cfg.Worker
	wc.ID = "victim"
	victim, err := worker.New(wc, worker.Deps{NC: nc, Log: testLogger(t), Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- victim.Run(ctx) }()
	defer func() { cancel(); <-done; victim.Close() }()
	waitWorkers(t, s, 2)

	calls := startCalls(t, s.Ingest, "orphaned", 4)
	onVictim := 0
	for _, c := range calls {
		if c.Placements()[0].Worker == "victim" {
			onVictim++
		}
	}
	if onVictim == 0 {
		t.Fatal("no call was placed on the victim")
	}
	p := play(t, calls)
	eventually(t, 10*time.Second, "a second of audio", func() bool { return p.sent.Load() >= 50 })

	s.Stop(s.Routers[0])
	nc.Close() // the victim is gone: no heartbeats, no answers, and no router to notice
	died := time.Now()
	target := p.sent.Load() + 25
	eventually(t, 10*time.Second, "half a second with no router", func() bool { return p.sent.Load() >= target })
	r2, err := s.AddRouter("router-2")
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	_ = r2

	var detect time.Duration
	eventually(t, 20*time.Second, "the victim's calls re-placed by reconciliation", func() bool {
		if detect == 0 && counter(t, s.Registry(), "callrouter_router_stranded_notices_total", map[string]string{"router": "router-2"}) > 0 {
			detect = time.Since(started)
		}
		for _, c := range calls {
			if c.Placements()[0].Worker == "victim" {
				return false
			}
		}
		return true
	})
	resume := time.Since(died)
	target = p.sent.Load() + 50
	eventually(t, 10*time.Second, "another second of audio", func() bool { return p.sent.Load() >= target })
	sent := p.end(t, s)

	tl := account(t, calls, sent, 0)
	t.Logf("worker death no router heard, %d calls (%d on the victim): the new router noticed %v after it started, "+
		"calls resumed %v after the death; %d frames sent per leg, %d missing (causes %s), %d duplicated, %d unaccounted",
		len(calls), onVictim, detect.Round(time.Millisecond), resume.Round(time.Millisecond), sent, tl.missing, causes(tl.causes),
		tl.duplicated, tl.unaccounted)
	if tl.missing != 0 || tl.unaccounted != 0 {
		t.Errorf("%d frames missing, %d unaccounted; want 0 (the ring covers the outage)", tl.missing, tl.unaccounted)
	}
}

// TestRouterRestartWhileCallsStartRefusesNone: calls keep starting while the only router is
// replaced at once by one that has heard no heartbeat yet, and later stopped with no router at all
// for half a second before a third starts.
func TestRouterRestartWhileCallsStartRefusesNone(t *testing.T) {
	cfg := faultConfig(t)
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitWorkers(t, s, 2)
	const n = 60
	var slowest time.Duration
	var failed []error
	var calls []*ingest.Call
	ten, thirty := make(chan struct{}), make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < n; i++ {
			switch i {
			case 10:
				close(ten)
			case 30:
				close(thirty)
			}
			start := time.Now()
			c, err := s.Ingest.StartCall(context.Background(), tone(t, 1).Spec("acme", fmt.Sprintf("restart-%d", i), nil))
			slowest = max(slowest, time.Since(start))
			if err != nil {
				failed = append(failed, err)
				continue
			}
			calls = append(calls, c)
			time.Sleep(20 * time.Millisecond) // a call every ~20 ms: the arrival rate, not a wait for state
		}
	}()
	<-ten
	s.Stop(s.Routers[0])
	r2, err := s.AddRouter("router-2")
	if err != nil {
		t.Fatal(err)
	}
	<-thirty
	s.Stop(r2)
	probe, err := nats.Connect(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	eventually(t, 10*time.Second, "no router to answer", func() bool {
		_, err := probe.Request(subjects.Place, []byte("{}"), time.Second)
		return errors.Is(err, nats.ErrNoResponders)
	})
	gone := time.Now()
	time.Sleep(500 * time.Millisecond) // the outage: no router at all
	if _, err := s.AddRouter("router-3"); err != nil {
		t.Fatal(err)
	}
	outage := time.Since(gone)
	<-done
	retries := counter(t, s.Registry(), "callrouter_ingest_place_retries_total", nil)
	waits := counter(t, s.Registry(), "callrouter_router_cold_waits_total", nil)
	t.Logf("router restarted twice (at once, then after %v with no router) while %d calls start: %d refused or failed, slowest placement %v, %v ingest retries, %v cold waits",
		outage.Round(time.Millisecond), n, len(failed), slowest.Round(time.Millisecond), retries, waits)
	for _, err := range failed {
		t.Errorf("a call was not placed: %v", err)
	}
	for _, c := range calls {
		c.End("hangup")
	}
}
