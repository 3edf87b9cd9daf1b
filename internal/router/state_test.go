package router_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/obs"
	"github.com/callrouter/callrouter/internal/router"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// These tests run one router alone on an embedded nats-server; the test plays the workers (their
// heartbeats, offers and releases) and the ingest (its heartbeats, place requests, the notices it
// receives) over NATS.

type cluster struct {
	r  *router.Router
	nc *nats.Conn

	mu      sync.Mutex
	workers map[string]*fakeWorker
	ingest  *wire.IngestHeartbeat // nil: no ingest heartbeats
}

// fakeWorker is a worker's state as its heartbeats report it, and what it was sent.
type fakeWorker struct {
	hb       wire.WorkerHeartbeat
	silent   bool // stop heartbeating, as a dead worker
	refuse   string
	delay    time.Duration // answer offers this late, as a starved worker
	offers   []wire.Offer
	releases []wire.Release
}

// startCluster runs router r1 (100 ms heartbeats, tuned by tune) and heartbeats every 100 ms
// for the fake components the test adds.
func startCluster(t *testing.T, tune func(*router.Config)) *cluster {
	t.Helper()
	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	conn := func() *nats.Conn {
		nc, err := nats.Connect(srv.URL())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	cl := &cluster{nc: conn(), workers: map[string]*fakeWorker{}}
	stop := make(chan struct{})
	beat := make(chan struct{})
	go func() {
		defer close(beat)
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		for {
			cl.beat(t)
			select {
			case <-stop:
				return
			case <-tk.C:
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-beat })
	cfg := router.DefaultConfig()
	cfg.ID = "r1"
	cfg.HeartbeatInterval = 100 * time.Millisecond
	if tune != nil {
		tune(&cfg)
	}
	h := &obs.Health{}
	r, err := router.New(cfg, router.Deps{NC: conn(), Log: zerolog.Nop(), Health: h})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("router did not stop")
		}
		r.Close()
	})
	waitFor(t, 10*time.Second, "router ready", h.Ready)
	cl.r = r
	return cl
}

func (cl *cluster) beat(t *testing.T) {
	cl.mu.Lock()
	var msgs []*nats.Msg
	for id, w := range cl.workers {
		if w.silent {
			continue
		}
		w.hb.Active = len(w.hb.Calls)
		data, _ := json.Marshal(w.hb)
		msgs = append(msgs, &nats.Msg{Subject: subjects.Heartbeat(subjects.Worker, id), Data: data})
	}
	if cl.ingest != nil {
		data, _ := json.Marshal(cl.ingest)
		msgs = append(msgs, &nats.Msg{Subject: subjects.Heartbeat(subjects.Ingest, cl.ingest.ID), Data: data})
	}
	cl.mu.Unlock()
	for _, m := range msgs {
		_ = cl.nc.PublishMsg(m)
	}
}

// addWorker starts heartbeating worker id and answering its offers (OK unless refuse is set;
// an accepted call joins its heartbeat) and releases (the call leaves it).
func (cl *cluster) addWorker(t *testing.T, id string, capacity int) {
	t.Helper()
	cl.mu.Lock()
	w := &fakeWorker{hb: wire.WorkerHeartbeat{V: wire.V, ID: id, Pool: "default", Mode: "session", Capacity: capacity, Ready: true, IntervalMS: 100}}
	cl.workers[id] = w
	cl.mu.Unlock()
	if _, err := cl.nc.Subscribe(subjects.WorkerVerb(id, subjects.WorkerVerbOffer), func(m *nats.Msg) {
		var o wire.Offer
		if err := json.Unmarshal(m.Data, &o); err != nil {
			t.Errorf("offer %q: %v", m.Data, err)
			return
		}
		cl.mu.Lock()
		w.offers = append(w.offers, o)
		refuse, delay := w.refuse, w.delay
		held := -1
		for i, c := range w.hb.Calls {
			if c.Tenant == o.Call.Tenant && c.Call == o.Call.Call {
				held = i
			}
		}
		switch {
		case refuse != "":
		case held >= 0: // as a real worker: a held call advances its epoch in place
			w.hb.Calls[held].Epoch = max(w.hb.Calls[held].Epoch, o.Epoch)
		case len(w.hb.Calls) >= w.hb.Capacity:
			refuse = wire.CodeFull
		default:
			w.hb.Calls = append(w.hb.Calls, wire.WorkerCall{Tenant: o.Call.Tenant, Call: o.Call.Call, Epoch: o.Epoch, Ingest: o.Ingest})
		}
		cl.mu.Unlock()
		rep := wire.OfferReply{Reply: wire.OK(), Worker: id}
		if refuse != "" {
			rep.Reply = wire.Fail(refuse, "test")
		}
		time.Sleep(delay)
		bus.Respond(m, rep)
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.nc.Subscribe(subjects.WorkerVerb(id, subjects.WorkerVerbRelease), func(m *nats.Msg) {
		var r wire.Release
		if err := json.Unmarshal(m.Data, &r); err != nil {
			t.Errorf("release %q: %v", m.Data, err)
			return
		}
		cl.mu.Lock()
		w.releases = append(w.releases, r)
		var keep []wire.WorkerCall
		for _, c := range w.hb.Calls {
			if c.Tenant != r.Tenant || c.Call != r.Call || (r.Epoch != 0 && c.Epoch > r.Epoch) {
				keep = append(keep, c)
			}
		}
		w.hb.Calls = keep
		cl.mu.Unlock()
		if m.Reply != "" {
			bus.Respond(m, wire.ReleaseReply{Reply: wire.OK()})
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := cl.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the router to hear "+id, func() bool {
		for _, v := range cl.r.Workers() {
			if v.ID == id {
				return true
			}
		}
		return false
	})
}

func (cl *cluster) worker(id string, f func(w *fakeWorker)) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	f(cl.workers[id])
}

func (cl *cluster) setIngest(hb *wire.IngestHeartbeat) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	cl.ingest = hb
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func callSpec(call string) session.Spec {
	return session.Spec{ID: session.ID{Tenant: "acme", Call: call}, Legs: []session.Leg{
		{Index: 0, Name: "caller", Codec: frame.CodecPCMU, Rate: 8000}, {Index: 1, Name: "agent", Codec: frame.CodecPCMU, Rate: 8000}}}
}

func (cl *cluster) place(t *testing.T, req wire.PlaceRequest) wire.PlaceReply {
	t.Helper()
	req.V = wire.V
	if req.Ingest == "" {
		req.Ingest = "in-1"
	}
	if req.Pools == nil {
		req.Pools = []string{"default"}
	}
	var rep wire.PlaceReply
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := bus.Request(ctx, cl.nc, subjects.Place, req, &rep); err != nil {
		t.Fatalf("place %s at %d: %v", req.Call.Call, req.Epoch, err)
	}
	return rep
}

// Two placements of one call at once (ingest's retry at epoch 2 while epoch 1 is still being
// placed) both succeed; once ingest keeps epoch 2, exactly one worker holds the call, at epoch 2:
// the epoch-1 worker, if another, is reaped, and the epoch-2 worker is left alone.
func TestConcurrentPlacementsOfOneCallLeaveOneHolder(t *testing.T) {
	cl := startCluster(t, func(c *router.Config) { c.OrphanGrace = 600 * time.Millisecond })
	cl.addWorker(t, "w1", 1)
	cl.addWorker(t, "w2", 1)
	reaped, err := cl.nc.SubscribeSync(subjects.Event("acme", "dup", "reaped"))
	if err != nil {
		t.Fatal(err)
	}
	reps := make([]wire.PlaceReply, 2)
	var wg sync.WaitGroup
	for i := range reps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			reps[i] = cl.place(t, wire.PlaceRequest{Call: callSpec("dup"), Epoch: uint32(i + 1)})
		}()
	}
	wg.Wait()
	on := map[uint32]string{}
	for i, rep := range reps {
		if !rep.OK || rep.Epoch != uint32(i+1) || len(rep.Placements) != 1 {
			t.Fatalf("placement at epoch %d: %+v", i+1, rep)
		}
		on[rep.Epoch] = rep.Placements[0].Worker
	}
	// Usually two workers (each offer counts against its worker until the next heartbeat); one
	// when a heartbeat crossed the first offer and the second advanced that worker in place.
	t.Logf("epoch 1 on %s, epoch 2 on %s", on[1], on[2])
	cl.setIngest(&wire.IngestHeartbeat{V: wire.V, ID: "in-1", IntervalMS: 100, Calls: []wire.IngestCall{
		{Tenant: "acme", Call: "dup", Epoch: 2, Placements: []wire.Placement{{Pool: "default", Worker: on[2]}}}}})
	holders := func() map[string]uint32 {
		out := map[string]uint32{}
		cl.mu.Lock()
		defer cl.mu.Unlock()
		for id, w := range cl.workers {
			for _, c := range w.hb.Calls {
				if c.Call == "dup" {
					out[id] = c.Epoch
				}
			}
		}
		return out
	}
	waitFor(t, 10*time.Second, "one holder", func() bool { return len(holders()) == 1 })
	if on[1] != on[2] {
		m, err := reaped.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("no reaped event: %v", err)
		}
		var ev struct {
			Data struct{ Worker string } `json:"data"`
		}
		if err := json.Unmarshal(m.Data, &ev); err != nil || ev.Data.Worker != on[1] {
			t.Errorf("reaped event %s, want worker %s", m.Data, on[1])
		}
	}
	// Three more sweeps: the epoch-2 holder keeps the call.
	time.Sleep(600 * time.Millisecond)
	if h := holders(); len(h) != 1 || h[on[2]] != 2 {
		t.Errorf("holders %v, want only %s at epoch 2", h, on[2])
	}
	cl.worker(on[2], func(w *fakeWorker) {
		for _, r := range w.releases {
			t.Errorf("%s, the epoch-2 holder, was released: %+v", on[2], r)
		}
	})
}

// A worker whose heartbeats stop is declared down on bcast.down after misses × interval; the
// failover placement that follows goes elsewhere and resumes from the dead worker's last
// reported progress (the oldest frame in the ring for a leg it did not report).
func TestSilentWorkerIsDeclaredDownAndFailoverResumesItsProgress(t *testing.T) {
	cl := startCluster(t, nil)
	down, err := cl.nc.SubscribeSync(subjects.Bcast(subjects.TopicDown))
	if err != nil {
		t.Fatal(err)
	}
	cl.addWorker(t, "w1", 4)
	cl.addWorker(t, "w2", 4)
	cl.worker("w2", func(w *fakeWorker) { w.refuse = wire.CodeFull })
	if rep := cl.place(t, wire.PlaceRequest{Call: callSpec("fo"), Epoch: 1, Reason: "new"}); !rep.OK || rep.Placements[0].Worker != "w1" {
		t.Fatalf("placement: %+v, want w1", rep)
	}
	cl.worker("w2", func(w *fakeWorker) { w.refuse = "" })
	cl.setIngest(&wire.IngestHeartbeat{V: wire.V, ID: "in-1", IntervalMS: 100, Calls: []wire.IngestCall{
		{Tenant: "acme", Call: "fo", Epoch: 1, Placements: []wire.Placement{{Pool: "default", Worker: "w1"}}}}})
	cl.worker("w1", func(w *fakeWorker) { w.hb.Calls[0].Progress = []session.LegSeq{{Leg: 0, Next: 42}} })
	// The progress must have been heard before the worker goes silent.
	waitFor(t, 10*time.Second, "w1's progress in the call view", func() bool {
		for _, c := range cl.r.Calls() {
			for _, p := range c.Progress {
				if c.Call == "fo" && p.Leg == 0 && p.Next == 42 {
					return true
				}
			}
		}
		return false
	})
	silentAt := time.Now()
	cl.worker("w1", func(w *fakeWorker) { w.silent = true })
	var d wire.Down
	for {
		m, err := down.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("no down notice for w1: %v", err)
		}
		if err := json.Unmarshal(m.Data, &d); err != nil {
			t.Fatal(err)
		}
		if d.ID == "w1" {
			break
		}
	}
	if d.Component != subjects.Worker || d.By != "r1" {
		t.Errorf("down notice %+v, want component worker by r1", d)
	}
	if took := time.Since(silentAt); took < 200*time.Millisecond {
		t.Errorf("declared down %v after its last heartbeat, before 3 could be missed", took)
	}
	rep := cl.place(t, wire.PlaceRequest{Call: callSpec("fo"), Epoch: 2, Reason: wire.ReasonWorkerDown, Exclude: []string{"w1"}})
	if !rep.OK || rep.Placements[0].Worker != "w2" {
		t.Fatalf("failover placement: %+v, want w2", rep)
	}
	cl.worker("w2", func(w *fakeWorker) {
		o := w.offers[len(w.offers)-1]
		want := []session.LegSeq{{Leg: 0, Next: 42}, {Leg: 1, Next: session.FromRingStart}}
		if o.Epoch != 2 || o.Reason != wire.ReasonWorkerDown || len(o.Resume) != 2 || o.Resume[0] != want[0] || o.Resume[1] != want[1] {
			t.Errorf("failover offer %+v, want epoch 2, worker_down, resume %+v", o, want)
		}
	})
	cl.worker("w1", func(w *fakeWorker) {
		if len(w.offers) != 1 {
			t.Errorf("the dead worker got %d offers, want only the first", len(w.offers))
		}
	})
}

// A draining worker gets no new placements; with every worker draining the call is refused
// (no_capacity, with a retry-after), and the worker that resumes takes calls again.
func TestDrainingWorkerGetsNoPlacements(t *testing.T) {
	cl := startCluster(t, nil)
	cl.addWorker(t, "w1", 100)
	cl.addWorker(t, "w2", 100)
	hbsSeen := func(id string, draining bool) func() bool {
		return func() bool {
			for _, v := range cl.r.Workers() {
				if v.ID == id {
					return v.Draining == draining
				}
			}
			return false
		}
	}
	cl.worker("w1", func(w *fakeWorker) { w.hb.Draining, w.hb.Ready = true, false })
	waitFor(t, 10*time.Second, "w1 draining", hbsSeen("w1", true))
	for i := range 6 {
		rep := cl.place(t, wire.PlaceRequest{Call: callSpec(fmt.Sprintf("d%d", i)), Epoch: 1})
		if !rep.OK || rep.Placements[0].Worker != "w2" {
			t.Fatalf("placement %d: %+v, want w2 (w1 drains)", i, rep)
		}
	}
	cl.worker("w2", func(w *fakeWorker) { w.hb.Draining, w.hb.Ready = true, false })
	waitFor(t, 10*time.Second, "w2 draining", hbsSeen("w2", true))
	rep := cl.place(t, wire.PlaceRequest{Call: callSpec("none"), Epoch: 1})
	if rep.OK || rep.Code != wire.CodeNoCapacity || rep.RetryAfterMS <= 0 {
		t.Fatalf("placement with every worker draining: %+v, want %s with retry_after_ms", rep, wire.CodeNoCapacity)
	}
	cl.worker("w1", func(w *fakeWorker) {
		if len(w.offers) != 0 {
			t.Errorf("the draining w1 got offers %+v", w.offers)
		}
		w.hb.Draining, w.hb.Ready = false, true
	})
	waitFor(t, 10*time.Second, "w1 resumed", hbsSeen("w1", false))
	if rep := cl.place(t, wire.PlaceRequest{Call: callSpec("back"), Epoch: 1}); !rep.OK || rep.Placements[0].Worker != "w1" {
		t.Fatalf("placement after w1 resumed: %+v, want w1", rep)
	}
}

// A cold router with no worker at all refuses no_workers only once a full heartbeat round has
// passed since it started (it might not have heard the workers yet); a warm one at once.
func TestColdRouterRefusesNoWorkersOnlyAfterAHeartbeatRound(t *testing.T) {
	start := time.Now()
	cl := startCluster(t, func(c *router.Config) { c.Misses = 19 }) // cold for (19+1) × 100 ms
	rep := cl.place(t, wire.PlaceRequest{Call: callSpec("cold"), Epoch: 1})
	if rep.OK || rep.Code != wire.CodeNoWorkers {
		t.Fatalf("cold placement with no workers: %+v, want %s", rep, wire.CodeNoWorkers)
	}
	if took := time.Since(start); took < 2*time.Second {
		t.Errorf("refused %v after the router started, before a heartbeat round (2 s)", took)
	}
	asked := time.Now()
	rep = cl.place(t, wire.PlaceRequest{Call: callSpec("warm"), Epoch: 1})
	if rep.OK || rep.Code != wire.CodeNoWorkers || rep.RetryAfterMS <= 0 {
		t.Fatalf("warm placement with no workers: %+v, want %s with retry_after_ms", rep, wire.CodeNoWorkers)
	}
	if took := time.Since(asked); took > 1500*time.Millisecond {
		t.Errorf("a warm router took %v to refuse", took)
	}
}

// A placement the ingest lists on a worker that is alive without the call is stranded: after the
// reconcile grace the router tells the ingest (a Migrate without a reply subject, reason
// reconcile, the ingest's epoch) every sweep, until the ingest's heartbeat lists the call at a
// newer epoch on a worker that holds it. One on a worker nobody knows is reported worker_down.
func TestStrandedPlacementIsReportedUntilRepaired(t *testing.T) {
	cl := startCluster(t, func(c *router.Config) {
		c.OrphanGrace = 600 * time.Millisecond // a sweep every 200 ms
		c.ReconcileGrace = 300 * time.Millisecond
	})
	cl.addWorker(t, "w1", 4)
	cl.addWorker(t, "w2", 4)
	var mu sync.Mutex
	var notices []wire.Migrate
	var at []time.Time
	if _, err := cl.nc.Subscribe(subjects.IngestVerb("in-1", subjects.IngestVerbPlace), func(m *nats.Msg) {
		var mg wire.Migrate
		if err := json.Unmarshal(m.Data, &mg); err != nil {
			t.Errorf("notice %q: %v", m.Data, err)
			return
		}
		if m.Reply != "" {
			t.Errorf("a router's notice carries a reply subject %q", m.Reply)
		}
		mu.Lock()
		notices = append(notices, mg)
		at = append(at, time.Now())
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	if err := cl.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	count := func(call string) (n int, last wire.Migrate) {
		mu.Lock()
		defer mu.Unlock()
		for _, m := range notices {
			if m.Call == call {
				n, last = n+1, m
			}
		}
		return n, last
	}
	listed := time.Now()
	cl.setIngest(&wire.IngestHeartbeat{V: wire.V, ID: "in-1", IntervalMS: 100, Calls: []wire.IngestCall{
		{Tenant: "acme", Call: "lost", Epoch: 3, Placements: []wire.Placement{{Pool: "default", Worker: "w1"}}},
		{Tenant: "acme", Call: "ghost", Epoch: 1, Placements: []wire.Placement{{Pool: "default", Worker: "w9"}}}}})
	waitFor(t, 10*time.Second, "two notices for the stranded call", func() bool { n, _ := count("lost"); return n >= 2 })
	mu.Lock()
	first := at[0]
	mu.Unlock()
	if d := first.Sub(listed); d < 300*time.Millisecond {
		t.Errorf("first notice %v after the ingest listed the call, within the reconcile grace", d)
	}
	if _, m := count("lost"); m.Epoch != 3 || m.Worker != "w1" || m.Reason != wire.ReasonReconcile || m.Tenant != "acme" {
		t.Errorf("notice %+v, want epoch 3, w1, reason reconcile", m)
	}
	waitFor(t, 10*time.Second, "a notice for the call on an unknown worker", func() bool { n, _ := count("ghost"); return n >= 1 })
	if _, m := count("ghost"); m.Worker != "w9" || m.Reason != wire.ReasonWorkerDown || m.Epoch != 1 {
		t.Errorf("notice %+v, want w9, worker_down, epoch 1", m)
	}
	// The ingest re-places the call on w2 at epoch 4: once both heartbeats agree the notices stop.
	cl.worker("w2", func(w *fakeWorker) {
		w.hb.Calls = append(w.hb.Calls, wire.WorkerCall{Tenant: "acme", Call: "lost", Epoch: 4, Ingest: "in-1"})
	})
	cl.setIngest(&wire.IngestHeartbeat{V: wire.V, ID: "in-1", IntervalMS: 100, Calls: []wire.IngestCall{
		{Tenant: "acme", Call: "lost", Epoch: 4, Placements: []wire.Placement{{Pool: "default", Worker: "w2"}}}}})
	waitFor(t, 10*time.Second, "the router to see the re-placement", func() bool {
		for _, c := range cl.r.Calls() {
			if c.Call == "lost" && c.Epoch == 4 {
				return true
			}
		}
		return false
	})
	time.Sleep(400 * time.Millisecond) // w2's heartbeat and a sweep in flight
	before, _ := count("lost")
	time.Sleep(800 * time.Millisecond) // four sweeps
	if after, m := count("lost"); after != before {
		t.Errorf("%d notices after the call was repaired, the last %+v", after-before, m)
	}
}

// TestMoveOfferWaitsLongerThanANewCallsOffer: a worker that answers offers late (a starved one)
// loses a new call's offer at -offer-timeout, which is abandoned and released, but takes a call
// moved make-before-break (drain, rebalance), whose offer may take -move-offer-timeout: its
// current worker keeps processing it meanwhile, and giving up would only repeat the move.
func TestMoveOfferWaitsLongerThanANewCallsOffer(t *testing.T) {
	cl := startCluster(t, func(c *router.Config) { c.OfferTimeout, c.MoveOfferTimeout = 200*time.Millisecond, 20*time.Second })
	cl.addWorker(t, "w1", 10)
	cl.worker("w1", func(w *fakeWorker) { w.delay = 600 * time.Millisecond })
	if rep := cl.place(t, wire.PlaceRequest{Call: callSpec("new"), Epoch: 1}); rep.OK {
		t.Fatalf("a new call's offer answered after 600 ms, with a 200 ms offer timeout, was placed: %+v", rep)
	}
	waitFor(t, 10*time.Second, "the abandoned offer's release", func() bool {
		abandoned := false
		cl.worker("w1", func(w *fakeWorker) {
			for _, r := range w.releases {
				abandoned = abandoned || r.Call == "new" && r.Reason == wire.ReasonOfferAbandoned
			}
		})
		return abandoned
	})
	for _, reason := range []string{wire.ReasonDrain, wire.ReasonRebalance} {
		rep := cl.place(t, wire.PlaceRequest{Call: callSpec("moved-" + reason), Epoch: 2, Reason: reason})
		if !rep.OK || len(rep.Placements) != 1 || rep.Placements[0].Worker != "w1" {
			t.Errorf("a %s move whose offer was answered after 600 ms: %+v, want placed on w1", reason, rep)
		}
	}
}
