package worker_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// TestDrainingWorkerHandsBackAtTheFence: a worker shutting down drains (its heartbeats then come
// from the drain), and ingest has not moved its call yet when the process stalls past the fence.
// The call stops (the routers may have re-placed it from the worker's last progress), and the
// worker must hand it back to ingest at once with where it stopped, as it does when not draining,
// rather than leave it stopped until the routers' reconciliation finds it. Idle: the drain's
// heartbeat finds the stall; with a frame: the call meets the fence first and may be gone before
// the next heartbeat.
func TestDrainingWorkerHandsBackAtTheFence(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame bool
	}{{"idle", false}, {"frame", true}} {
		t.Run(tc.name, func(t *testing.T) { drainFence(t, tc.frame) })
	}
}

func drainFence(t *testing.T, withFrame bool) {
	rec.reset()
	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	wnc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer wnc.Close()
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	l := &lone{srv: srv, nc: nc, id: "w1"}

	// Ingest "in1" never answers a drain's request (the call is not moved); it records and answers
	// hand-backs.
	var mu sync.Mutex
	var handBacks []wire.Migrate
	sub, err := nc.Subscribe(subjects.IngestVerb("in1", subjects.IngestVerbPlace), func(m *nats.Msg) {
		var req wire.Migrate
		if json.Unmarshal(m.Data, &req) == nil && req.Reason == wire.ReasonFenced {
			mu.Lock()
			handBacks = append(handBacks, req)
			mu.Unlock()
			bus.Respond(m, wire.OK())
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	drains, err := nc.SubscribeSync(subjects.IngestVerb("in1", subjects.IngestVerbPlace))
	if err != nil {
		t.Fatal(err)
	}
	defer drains.Unsubscribe()
	hb, err := nc.SubscribeSync(subjects.Heartbeat(subjects.Worker, "w1"))
	if err != nil {
		t.Fatal(err)
	}
	defer hb.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	wc := workerConfig()
	wc.ID = "w1"
	wc.DrainTimeout = 20 * time.Second // the drain ends when the call has gone, not at its deadline
	w, err := worker.New(wc, worker.Deps{NC: wnc, Log: testLogger(t), Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	l.w = w
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(40 * time.Second):
			t.Error("worker did not stop")
		}
		w.Close()
	}()
	if _, err := hb.NextMsg(10 * time.Second); err != nil {
		t.Fatalf("no heartbeat: %v", err)
	}

	if r := l.offer(t, wire.Offer{Call: spec("f-1"), Epoch: 1}); !r.OK {
		t.Fatalf("offer: %+v", r.Reply)
	}
	for seq := range uint32(3) {
		var fl frame.Flags
		if seq == 0 {
			fl = frame.FlagEpochStart
		}
		l.send(t, "f-1", 0, 1, seq, fl)
		l.send(t, "f-1", 1, 1, seq, fl)
	}
	eventually(t, 10*time.Second, "the call's frames to be processed", func() bool {
		return len(rec.seqsOf("acme/f-1/0")) == 3 && len(rec.seqsOf("acme/f-1/1")) == 3
	})

	cancel() // shutdown: the worker drains
	if _, err := drains.NextMsg(10 * time.Second); err != nil {
		t.Fatalf("the drain asked ingest nothing: %v", err)
	}
	handedBack := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(handBacks) > 0
	}
	// The drain's heartbeat may overwrite one stall with its own tick: stall again until it shows.
	for i := 0; i < 5 && !handedBack(); i++ {
		worker.StallHeartbeats(w)
		if withFrame {
			l.send(t, "f-1", 0, 1, 3, 0)
		}
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) && !handedBack() {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if !handedBack() {
		t.Fatal("the call stopped at the fence during a drain and was never handed back to ingest")
	}
	eventually(t, 10*time.Second, "the fenced call to go", func() bool { return w.Calls() == 0 })
	mu.Lock()
	defer mu.Unlock()
	hbk := handBacks[0]
	if hbk.Call != "f-1" || hbk.Worker != "w1" || hbk.Epoch != 1 || len(hbk.Progress) != 2 {
		t.Fatalf("hand-back %+v", hbk)
	}
	for _, ls := range hbk.Progress {
		if ls.Next != 3 {
			t.Errorf("hand-back progress %+v: want next 3 on each leg (frames 0-2 processed)", hbk.Progress)
		}
	}
}
