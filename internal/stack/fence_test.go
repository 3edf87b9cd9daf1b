package stack

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// TestFencedOnlyWorkerGetsItsCallsBack: the pool's only worker fences itself (its heartbeat loop
// stalled) and hands its calls back. Ingest avoids a fenced worker, but with no other one it must
// not wait out its replace timeout (30 s, longer than the ring) while the routers' notices, which
// say the worker is alive without the calls, are dropped: the calls are back within seconds, and
// every frame is processed once or counted in a gap.
func TestFencedOnlyWorkerGetsItsCallsBack(t *testing.T) {
	recorded.reset()
	cfg := faultConfig(t)
	cfg.Workers = 1
	cfg.Ingest.ReplaceTimeout = ingest.DefaultConfig().ReplaceTimeout
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitWorkers(t, s, 1)
	calls := startCalls(t, s.Ingest, "fenced", 3)
	p := play(t, calls)
	eventually(t, 10*time.Second, "a second of audio", func() bool { return p.sent.Load() >= 50 })

	fence(t, s, s.Workers[0].ID(), calls)
	fenced := time.Now()
	eventually(t, 8*time.Second, "the calls back on the only worker", func() bool {
		for _, c := range calls {
			if c.Epoch() < 2 {
				return false
			}
		}
		return s.Workers[0].Calls() == len(calls)
	})
	back := time.Since(fenced)
	target := p.sent.Load() + 50
	eventually(t, 10*time.Second, "another second of audio", func() bool { return p.sent.Load() >= target })
	sent := p.end(t, s)

	tl := account(t, calls, sent, 0)
	t.Logf("only worker fenced, %d calls: back %v after the hand-back; %d frames sent per leg, %d missing (causes %s), %d duplicated, %d unaccounted",
		len(calls), back.Round(time.Millisecond), sent, tl.missing, causes(tl.causes), tl.duplicated, tl.unaccounted)
	if tl.unaccounted != 0 || tl.duplicated != 0 {
		t.Errorf("%d frames unaccounted, %d duplicated; want 0", tl.unaccounted, tl.duplicated)
	}
	if back < cfg.Ingest.Ring-time.Second && tl.missing != 0 {
		t.Errorf("%d frames missing; the %v ring covers the %v the calls were away", tl.missing, cfg.Ingest.Ring, back)
	}
}

// TestPoolWithNoWorkerTakesTheNextOneAtOnce: the pool's only worker dies silently and the calls
// have nowhere to go for longer than the ring holds, so the re-placement's backoff has grown to
// seconds. When a worker joins, the routers' notices (every sweep) wake the waiting re-placement:
// the calls are on the new worker within a couple of sweeps, not at the backoff's next turn, and
// the frames the ring no longer held are gaps with a cause, none silently lost.
func TestPoolWithNoWorkerTakesTheNextOneAtOnce(t *testing.T) {
	recorded.reset()
	cfg := faultConfig(t)
	cfg.Workers = 1
	cfg.Worker.Pool = "elsewhere" // the stack's own worker is in no pool the calls need
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	nc, err := nats.Connect(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	wc := cfg.Worker
	wc.ID, wc.Pool = "victim", "default"
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
	calls := startCalls(t, s.Ingest, "nowhere", 3)
	p := play(t, calls)
	eventually(t, 10*time.Second, "a second of audio", func() bool { return p.sent.Load() >= 50 })

	nc.Close() // the pool's only worker is gone
	died := time.Now()
	eventually(t, 10*time.Second, "the victim declared down", func() bool {
		return counter(t, s.Registry(), "callrouter_router_declared_down_total", nil) > 0
	})
	// Longer than the ring, and long enough for the backoff to reach its 5 s bound.
	target := died.Add(cfg.Ingest.Ring + 2*time.Second)
	eventually(t, 20*time.Second, "the outage to outlast the ring", func() bool { return time.Now().After(target) })
	wc.ID = "worker-2"
	if _, err := s.AddWorker("worker-2", wc); err != nil {
		t.Fatal(err)
	}
	waitWorkers(t, s, 2)
	joined := time.Now()
	eventually(t, 10*time.Second, "the calls on the new worker", func() bool {
		for _, c := range calls {
			if pl := c.Placements(); len(pl) != 1 || pl[0].Worker != "worker-2" {
				return false
			}
		}
		return true
	})
	took := time.Since(joined)
	target2 := p.sent.Load() + 50
	eventually(t, 10*time.Second, "another second of audio", func() bool { return p.sent.Load() >= target2 })
	sent := p.end(t, s)

	tl := account(t, calls, sent, 0)
	t.Logf("only worker dead for %v, %d calls: on the new worker %v after it was seen; %d frames sent per leg, %d missing (causes %s), %d duplicated, %d unaccounted",
		joined.Sub(died).Round(time.Millisecond), len(calls), took.Round(time.Millisecond), sent, tl.missing, causes(tl.causes), tl.duplicated, tl.unaccounted)
	if took > 3*time.Second {
		t.Errorf("the calls took %v to reach the worker that joined; want a sweep or two", took)
	}
	if tl.unaccounted != 0 {
		t.Errorf("%d frames unaccounted; want every missing frame in a gap with a cause", tl.unaccounted)
	}
	if tl.missing == 0 {
		t.Error("no frame missing after an outage longer than the ring: the test did not test that")
	}
}

// fence does to each call what a fenced worker does (worker.tick): it stops the call without
// publishing further (here by a release, whose answer says where the call stopped) and hands it
// back to its ingest with reason fenced and that progress.
func fence(t *testing.T, s *Stack, workerID string, calls []*ingest.Call) {
	t.Helper()
	nc, err := nats.Connect(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for _, c := range calls {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var rr wire.ReleaseReply
		err := bus.Request(ctx, nc, subjects.WorkerVerb(workerID, subjects.WorkerVerbRelease),
			wire.Release{V: wire.V, Tenant: c.ID().Tenant, Call: c.ID().Call, Epoch: c.Epoch(), Reason: "fenced in a test"}, &rr)
		cancel()
		if err != nil || !rr.OK {
			t.Fatalf("release of %s: %v %+v", c.ID(), err, rr)
		}
		data, err := json.Marshal(wire.Migrate{V: wire.V, Tenant: c.ID().Tenant, Call: c.ID().Call, Epoch: c.Epoch(),
			Worker: workerID, Reason: wire.ReasonFenced, Progress: rr.Progress})
		if err != nil {
			t.Fatal(err)
		}
		// A request, as the worker's hand-back is, but nobody waits for its answer here.
		if err := nc.PublishMsg(&nats.Msg{Subject: subjects.IngestVerb(s.Ingest.ID(), subjects.IngestVerbPlace), Reply: nats.NewInbox(), Data: data}); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}
