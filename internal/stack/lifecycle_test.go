package stack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/router"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// slowProc sleeps on every frame: a worker that cannot keep up.
type slowProc struct{ d time.Duration }

func init() {
	proc.Register("testslow", func(o proc.Options) (proc.Processor, error) {
		d, err := time.ParseDuration(o["delay"])
		return slowProc{d}, err
	})
}

func (p slowProc) Start(proc.Call) (proc.Handler, error) { return p, nil }
func (p slowProc) Frame(*proc.Frame)                     { time.Sleep(p.d) }
func (p slowProc) Stop(string)                           {}

// fastConfig shortens timers so lifecycle tests take seconds.
func fastConfig(t *testing.T) Config {
	wc := testWorkerConfig()
	wc.HeartbeatInterval = 100 * time.Millisecond
	wc.IdleTimeout = time.Second
	rc := router.DefaultConfig()
	rc.HeartbeatInterval = 100 * time.Millisecond
	rc.OrphanGrace = time.Second
	ic := ingest.DefaultConfig()
	ic.HeartbeatInterval = 100 * time.Millisecond
	ic.DrainTimeout = time.Second
	return Config{Worker: wc, Router: rc, Ingest: ic, Log: testLogger(t)}
}

func counter(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			if matches(m, labels) {
				total += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return total
}

func matches(m *dto.Metric, labels map[string]string) bool {
	for k, v := range labels {
		found := false
		for _, lp := range m.Label {
			if lp.GetName() == k && lp.GetValue() == v {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func waitWorkers(t *testing.T, s *Stack, n int) {
	t.Helper()
	eventually(t, 10*time.Second, fmt.Sprintf("%d workers visible to every router", n), func() bool {
		for _, r := range s.Routers {
			if len(r.Workers()) != n {
				return false
			}
		}
		return true
	})
}

// warmBaseline runs one call through so every connection has made its request-reply
// subscriptions, then returns the server's subscription count.
func warmBaseline(t *testing.T, s *Stack) uint32 {
	t.Helper()
	c := startSilentCall(t, s.Ingest, "warmup")
	c.End("warmup")
	eventually(t, 5*time.Second, "the warm-up call to end", func() bool {
		for _, w := range s.Workers {
			if w.Calls() != 0 {
				return false
			}
		}
		return true
	})
	return s.Server.Subscriptions()
}

// startSilentCall places a call and sends a few frames, then nothing: its end message is "lost".
func startSilentCall(t *testing.T, n *ingest.Node, call string) *ingest.Call {
	t.Helper()
	rec := tone(t, 10)
	c, err := n.StartCall(context.Background(), rec.Spec("acme", call, nil))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		for leg := 0; leg < 2; leg++ {
			if err := c.Send(leg, rec.Frames[leg][i], 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	return c
}

func TestLostEndIsReapedAndSubscriptionsReturnToBaseline(t *testing.T) {
	cfg := fastConfig(t)
	cfg.Ingest.MediaTimeout = time.Minute // only the worker's idle reaper may act
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitWorkers(t, s, 1)
	baseline := warmBaseline(t, s)
	var calls []*ingest.Call
	for i := 0; i < 5; i++ {
		calls = append(calls, startSilentCall(t, s.Ingest, "silent-"+strconv.Itoa(i)))
	}
	// The calls are kept alive until every one's subscriptions are seen (on a loaded machine the
	// first may otherwise idle out before the last is placed), then fall silent.
	silence := make([]byte, 160)
	last := time.Now()
	eventually(t, 10*time.Second, "per-call subscriptions to appear", func() bool {
		if time.Since(last) >= 20*time.Millisecond {
			last = time.Now()
			for _, c := range calls {
				for leg := 0; leg < 2; leg++ {
					_ = c.Send(leg, silence, 0) // an error is a call already reaped: the count says so
				}
			}
		}
		return s.Server.Subscriptions() >= baseline+10
	})
	eventually(t, 10*time.Second, "the idle reaper to release every call", func() bool { return s.Workers[0].Calls() == 0 })
	eventually(t, 5*time.Second, "the server's subscription count back at baseline", func() bool { return s.Server.Subscriptions() == baseline })
	if got := counter(t, s.Registry(), "callrouter_worker_calls_ended_total", map[string]string{"reason": proc.StopIdle}); got != 5 {
		t.Errorf("calls ended idle = %v, want 5", got)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestIngestEndsCallsWhoseMediaStopped(t *testing.T) {
	cfg := fastConfig(t)
	cfg.Ingest.MediaTimeout = 500 * time.Millisecond
	cfg.Worker.IdleTimeout = time.Minute
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitWorkers(t, s, 1)
	c := startSilentCall(t, s.Ingest, "mute")
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("ingest did not end the call whose media stopped")
	}
	eventually(t, 5*time.Second, "the worker to see the end", func() bool { return s.Workers[0].Calls() == 0 })
	if got := counter(t, s.Registry(), "callrouter_worker_calls_ended_total", map[string]string{"reason": proc.StopEnd}); got != 1 {
		t.Errorf("calls ended by end = %v, want 1", got)
	}
}

func TestRouterReleasesCallsNoIngestOwns(t *testing.T) {
	cfg := fastConfig(t)
	cfg.Worker.IdleTimeout = time.Minute // only the router's orphan reaper may act
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitWorkers(t, s, 1)
	baseline := warmBaseline(t, s)
	// A second ingest node on its own connection, which then dies without ending its call.
	nc, err := nats.Connect(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	ic := cfg.Ingest
	ic.ID = "doomed"
	n, err := ingest.New(ic, ingest.Deps{NC: nc, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	select {
	case <-n.Ready():
	case err := <-done:
		t.Fatalf("the second ingest node stopped before it was ready: %v", err)
	}
	startSilentCall(t, n, "orphan")
	eventually(t, 5*time.Second, "the worker to hold the call", func() bool { return s.Workers[0].Calls() == 1 })
	nc.Close() // the node is gone: no heartbeats, no end
	cancel()
	<-done
	eventually(t, 10*time.Second, "the router to release the orphan", func() bool { return s.Workers[0].Calls() == 0 })
	eventually(t, 5*time.Second, "subscriptions back at baseline", func() bool { return s.Server.Subscriptions() == baseline })
	if got := counter(t, s.Registry(), "callrouter_router_reaped_calls_total", nil); got < 1 {
		t.Errorf("router reaped %v calls, want >= 1", got)
	}
}

func TestNoCapacityIsRefusedWithReason(t *testing.T) {
	cfg := fastConfig(t)
	cfg.Worker.Capacity = 2
	cfg.Workers = 2
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitWorkers(t, s, 2)
	for i := 0; i < 4; i++ {
		startSilentCall(t, s.Ingest, "fill-"+strconv.Itoa(i))
	}
	_, err = s.Ingest.StartCall(context.Background(), tone(t, 1).Spec("acme", "one-too-many", nil))
	var re *ingest.RefusedError
	if !errors.As(err, &re) {
		t.Fatalf("5th call: err %v, want a refusal", err)
	}
	if re.Code != wire.CodeNoCapacity || re.Reason == "" || re.RetryAfter <= 0 {
		t.Errorf("refusal %+v: want code %q, a reason and a retry-after", re, wire.CodeNoCapacity)
	}
	if wait, ok := ingest.RetryAfter(err); !ok || wait <= 0 {
		t.Errorf("RetryAfter(%v) = %v, %v", err, wait, ok)
	}
	for _, w := range s.Workers {
		if w.Calls() != 2 {
			t.Errorf("%s holds %d calls, want 2 (no over-admission)", w.ID(), w.Calls())
		}
	}
}

func TestTwoRoutersNeverPlaceACallTwice(t *testing.T) {
	recorded.reset()
	cfg := fastConfig(t)
	cfg.Routers, cfg.Workers = 2, 3
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitWorkers(t, s, 3)
	const calls, frames = 40, 25
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i, err := range playCalls(ctx, t, s, tone(t, frames), "tworouters", calls, frames) {
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	eventually(t, 10*time.Second, "calls to finish", func() bool {
		for _, w := range s.Workers {
			if w.Calls() != 0 {
				return false
			}
		}
		return true
	})
	if got := counter(t, s.Registry(), "callrouter_worker_offers_total", map[string]string{"result": "accepted"}); got != calls {
		t.Errorf("workers accepted %v offers for %d calls", got, calls)
	}
	perRouter := map[string]float64{}
	for _, r := range []string{"router-1", "router-2"} {
		perRouter[r] = counter(t, s.Registry(), "callrouter_router_placements_total", map[string]string{"router": r, "result": "placed"})
	}
	if perRouter["router-1"]+perRouter["router-2"] != calls {
		t.Errorf("placements per router %v, want %d in all", perRouter, calls)
	}
	checkComplete(t, "tworouters", calls, 2, frames)
}

func TestSlowWorkerLosesOnlyItsOwnFramesAndGetsNoOffers(t *testing.T) {
	recorded.reset()
	cfg := fastConfig(t)
	cfg.Workers = 2
	cfg.Worker.ShedAfter = time.Hour // this test is about isolation, not shedding
	cfg.Worker.QueueFrames = 25
	cfg.Worker.Capacity = 3 // with the slow worker's 2, least-loaded placement gives each worker two of six calls
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	slowCfg := cfg.Worker
	slowCfg.Processors = append(append([]string{}, cfg.Worker.Processors...), "testslow")
	slowCfg.ProcessorOptions = map[string]proc.Options{"testslow": {"delay": "25ms"}}
	slowCfg.Capacity = 2
	slow, err := s.AddWorker("slow", slowCfg)
	if err != nil {
		t.Fatal(err)
	}
	waitWorkers(t, s, 3)
	// Six calls: least-loaded placement gives each worker two.
	rec := tone(t, 150)
	var wg sync.WaitGroup
	var calls []*ingest.Call
	for i := 0; i < 6; i++ {
		c, err := s.Ingest.StartCall(context.Background(), rec.Spec("acme", "slowtest-"+strconv.Itoa(i), nil))
		if err != nil {
			t.Fatal(err)
		}
		calls = append(calls, c)
	}
	for _, c := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tk := time.NewTicker(20 * time.Millisecond)
			defer tk.Stop()
			for i := 0; i < rec.Len(); i++ {
				<-tk.C
				for leg := 0; leg < 2; leg++ {
					_ = c.Send(leg, rec.Frames[leg][i], 0)
				}
			}
		}()
	}
	onSlow := map[string]bool{}
	for _, c := range calls {
		for _, p := range c.Placements() {
			if p.Worker == slow.ID() {
				onSlow[c.ID().Call] = true
			}
		}
	}
	if len(onSlow) != 2 {
		t.Fatalf("%d calls on the slow worker, want 2", len(onSlow))
	}
	eventually(t, 10*time.Second, "the router to stop offering to the lagging worker", func() bool {
		for _, w := range s.Routers[0].Workers() {
			if w.ID == slow.ID() {
				return !w.Eligible && w.LagMS > 0
			}
		}
		return false
	})
	// While it lags, new calls go elsewhere.
	for i := 0; i < 2; i++ {
		c, err := s.Ingest.StartCall(context.Background(), rec.Spec("acme", "later-"+strconv.Itoa(i), nil))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range c.Placements() {
			if p.Worker == slow.ID() {
				t.Errorf("new call %s placed on the lagging worker", c.ID())
			}
		}
		c.End("test")
	}
	wg.Wait()
	for _, c := range calls {
		c.End("hangup")
	}
	eventually(t, 20*time.Second, "every call to finish", func() bool {
		for _, w := range s.Workers {
			if w.Calls() != 0 {
				return false
			}
		}
		return true
	})
	recorded.mu.Lock()
	defer recorded.mu.Unlock()
	for _, c := range calls {
		for leg := 0; leg < 2; leg++ {
			k := fmt.Sprintf("%s/%d", c.ID(), leg)
			lost := 0
			for _, g := range recorded.gaps[k] {
				lost += g.Count()
				if g.Cause != proc.CauseBackpressure && g.Cause != proc.CauseStale {
					t.Errorf("%s: gap cause %q, want worker backpressure or stale", k, g.Cause)
				}
			}
			if onSlow[c.ID().Call] && lost == 0 {
				t.Errorf("%s on the slow worker lost nothing; the test did not overload it", k)
			}
			if !onSlow[c.ID().Call] && (lost != 0 || len(recorded.seqs[k]) != rec.Len()) {
				t.Errorf("%s on a healthy worker: %d lost, %d processed of %d", k, lost, len(recorded.seqs[k]), rec.Len())
			}
		}
	}
}

func TestControlSubjectReachesTheHolder(t *testing.T) {
	s, err := Start(fastConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitWorkers(t, s, 1)
	startSilentCall(t, s.Ingest, "ctl")
	nc, err := nats.Connect(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var rep wire.CtlReply
	if err := bus.Request(ctx, nc, subjects.Ctl("acme", "ctl"), wire.CtlRequest{V: 1, Command: "status"}, &rep); err != nil {
		t.Fatal(err)
	}
	if !rep.OK || rep.Worker != "worker-1" || rep.Epoch != 1 {
		t.Errorf("status reply %+v", rep)
	}
	if err := bus.Request(ctx, nc, subjects.Ctl("acme", "ctl"), wire.CtlRequest{V: 1, Command: "frobnicate"}, &rep); err != nil || rep.OK || rep.Code != wire.CodeBadRequest {
		t.Errorf("unknown command: %+v, %v", rep, err)
	}
	err = bus.Request(ctx, nc, subjects.Ctl("acme", "nobody"), wire.CtlRequest{V: 1, Command: "status"}, &rep)
	if !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("control of a call nobody holds: %v, want no responders", err)
	}
}

func TestAdminAPI(t *testing.T) {
	s, err := Start(fastConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitWorkers(t, s, 1)
	startSilentCall(t, s.Ingest, "api")
	nc, err := nats.Connect(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	eventually(t, 5*time.Second, "the call in router.api.calls", func() bool {
		var calls wire.CallsReply
		return bus.Request(ctx, nc, subjects.API("calls"), struct{}{}, &calls) == nil && len(calls.Calls) == 1 && len(calls.Calls[0].Progress) == 2
	})
	var one wire.CallReply
	if err := bus.Request(ctx, nc, subjects.API("call"), wire.CallQuery{V: 1, Tenant: "acme", Call: "api"}, &one); err != nil || !one.OK ||
		one.Call.Placements[0].Worker != "worker-1" || one.Call.Ingest != "ingest-1" {
		t.Errorf("router.api.call: %+v %v", one, err)
	}
	if err := bus.Request(ctx, nc, subjects.API("call"), wire.CallQuery{V: 1, Tenant: "acme", Call: "nope"}, &one); err != nil || one.OK || one.Code != wire.CodeUnknown {
		t.Errorf("unknown call: %+v %v", one, err)
	}
	var ws wire.WorkersReply
	if err := bus.Request(ctx, nc, subjects.API("workers"), struct{}{}, &ws); err != nil || len(ws.Workers) != 1 || !ws.Workers[0].Eligible {
		t.Errorf("router.api.workers: %+v %v", ws, err)
	}
	raw, err := nc.RequestWithContext(ctx, subjects.API("calls"), nil)
	if err != nil || !json.Valid(raw.Data) {
		t.Errorf("calls with an empty body: %v", err)
	}
}

// A re-placement refused in one pool must not release the worker it was keeping in another.
func TestRefusedReplacementKeepsTheKeptWorker(t *testing.T) {
	s, err := Start(fastConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitWorkers(t, s, 1)
	c := startSilentCall(t, s.Ingest, "kept")
	nc, err := nats.Connect(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	req := wire.PlaceRequest{V: 1, Call: c.Spec(), Ingest: s.Ingest.ID(), Epoch: 2, Pools: []string{"default", "missing"},
		Keep: []wire.Placement{{Pool: "default", Worker: "worker-1"}}, Reason: "worker_down"}
	var rep wire.PlaceReply
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := bus.Request(ctx, nc, subjects.Place, req, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.OK || rep.Code != wire.CodeNoWorkers {
		t.Fatalf("reply %+v, want a no_workers refusal", rep)
	}
	time.Sleep(300 * time.Millisecond) // a wrongful release would be a publish already on its way (not an assertion)
	if got := s.Workers[0].Calls(); got != 1 {
		t.Errorf("the kept worker holds %d calls after the refused re-placement, want 1", got)
	}
}
