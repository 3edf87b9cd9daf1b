package worker_test

import (
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

// TestReleaseDuringDrainMigration: an operator drain has the worker asking ingest to move its
// call (ingest never answers), and the router's release for that call arrives meanwhile. The
// release wins: the call stops at once as released (not at the drain timeout, and not never:
// a drained worker keeps running), and the worker, still draining, refuses a new offer.
func TestReleaseDuringDrainMigration(t *testing.T) {
	wc := workerConfig()
	l := startLone(t, wc)
	var asks atomic.Int32
	sub, err := l.nc.Subscribe(subjects.IngestVerb("in1", subjects.IngestVerbPlace), func(*nats.Msg) { asks.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := l.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if r := l.offer(t, wire.Offer{Call: spec("d-1"), Epoch: 1}); !r.OK {
		t.Fatalf("offer: %+v", r.Reply)
	}
	for seq := range uint32(3) {
		var fl frame.Flags
		if seq == 0 {
			fl = frame.FlagEpochStart
		}
		l.send(t, "d-1", 0, 1, seq, fl)
		l.send(t, "d-1", 1, 1, seq, fl)
	}
	eventually(t, 10*time.Second, "the call's frames to be processed", func() bool { return len(rec.seqsOf("acme/d-1/0")) == 3 })

	m, err := l.nc.Request(subjects.WorkerVerb(l.id, wire.WorkerVerbDrain), []byte(`{"v":1}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var dr wire.DrainReply
	if err := json.Unmarshal(m.Data, &dr); err != nil || !dr.OK || !dr.Draining || dr.Calls != 1 {
		t.Fatalf("drain reply %s (%v)", m.Data, err)
	}
	eventually(t, 10*time.Second, "the drain to ask ingest to move the call", func() bool { return asks.Load() > 0 })

	if r := l.release(t, wire.Release{Tenant: "acme", Call: "d-1", Epoch: 1, Reason: "test"}); !r.OK {
		t.Fatalf("release during the migration: %+v", r.Reply)
	}
	start := time.Now()
	eventually(t, 10*time.Second, "the released call to stop", func() bool { return l.w.Calls() == 0 })
	if d := time.Since(start); d >= time.Second {
		t.Errorf("the call stopped %v after its release; the drain timeout is 1s", d)
	}
	if got := rec.stopsOf("acme/d-1"); len(got) != 1 || got[0] != proc.StopReleased {
		t.Errorf("stops %v, want one %q", got, proc.StopReleased)
	}
	if r := l.offer(t, wire.Offer{Call: spec("d-2"), Epoch: 1}); r.OK || r.Code != wire.CodeDraining {
		t.Errorf("offer to the drained worker: %+v, want %s", r.Reply, wire.CodeDraining)
	}
}

// TestReleaseOfMovedCallWithBacklog: a draining worker asked ingest to move a call and ingest
// did (make-before-break: the new owner starts at epoch 2's first frame, so the rest of epoch
// 1 is this worker's to process). The worker is behind: frames 1..19 of epoch 1 and the first
// frames of epoch 2 still wait on the call's channel when the router's orphan sweep, a grace
// after ingest switched, releases the call at epoch 1. The release must not throw the backlog
// away: every frame of epoch 1 is processed, with no gap, and the call stops at epoch 2's first
// frame as migrated.
func TestReleaseOfMovedCallWithBacklog(t *testing.T) {
	gate := make(chan struct{})
	frameGate.Store(&gate)
	opened := false
	defer func() {
		if !opened {
			close(gate)
		}
	}()
	wc := workerConfig()
	wc.Processors = []string{"wtseq", "wtgate"}
	l := startLone(t, wc)
	const call = "gate-moved"
	// Ingest: the call moves at once.
	var asks atomic.Int32
	sub, err := l.nc.Subscribe(subjects.IngestVerb("in1", subjects.IngestVerbPlace), func(m *nats.Msg) {
		asks.Add(1)
		data, _ := json.Marshal(wire.OK())
		_ = m.Respond(data)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := l.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if r := l.offer(t, wire.Offer{Call: spec(call), Epoch: 1}); !r.OK {
		t.Fatalf("offer: %+v", r.Reply)
	}
	// Frame 0 holds the call's goroutine in the gate; the rest of epoch 1 queues behind it, then
	// epoch 2's first frames (ingest switched).
	for seq := range uint32(20) {
		for leg := range uint8(2) {
			var fl frame.Flags
			if seq == 0 {
				fl = frame.FlagEpochStart
			}
			l.send(t, call, leg, 1, seq, fl)
		}
	}
	for seq := uint32(20); seq < 22; seq++ {
		for leg := range uint8(2) {
			var fl frame.Flags
			if seq == 20 {
				fl = frame.FlagEpochStart
			}
			l.send(t, call, leg, 2, seq, fl)
		}
	}
	m, err := l.nc.Request(subjects.WorkerVerb(l.id, wire.WorkerVerbDrain), []byte(`{"v":1}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var dr wire.DrainReply
	if err := json.Unmarshal(m.Data, &dr); err != nil || !dr.OK || dr.Calls != 1 {
		t.Fatalf("drain reply %s (%v)", m.Data, err)
	}
	// The worker asks ingest to move the call (and ingest does); the call's goroutine is still in
	// the gate.
	eventually(t, 10*time.Second, "the drain to ask ingest to move the call", func() bool { return asks.Load() > 0 })
	// The router's orphan release, fire and forget; a release for a call the worker does not
	// hold, answered after it (one subscription, handled in order), proves it was handled.
	data, _ := json.Marshal(wire.Release{V: wire.V, Tenant: "acme", Call: call, Epoch: 1, Reason: "orphan"})
	if err := l.nc.Publish(subjects.WorkerVerb(l.id, subjects.WorkerVerbRelease), data); err != nil {
		t.Fatal(err)
	}
	if r := l.release(t, wire.Release{Tenant: "acme", Call: "not-held", Reason: "test"}); r.Code != wire.CodeUnknown {
		t.Fatalf("release of a call not held: %+v", r.Reply)
	}
	close(gate)
	opened = true
	eventually(t, 10*time.Second, "the call to stop", func() bool { return l.w.Calls() == 0 })
	for leg := range 2 {
		k := fmt.Sprintf("acme/%s/%d", call, leg)
		if got := rec.seqsOf(k); !sameSeqs(got, seqRange(0, 20)) {
			t.Errorf("%s processed %v, want 0..19 (all of epoch 1) once each", k, got)
		}
		if g := rec.gapsOf(k); len(g) != 0 {
			t.Errorf("%s gaps %v, want none", k, g)
		}
	}
	if got := rec.stopsOf("acme/" + call); len(got) != 1 || got[0] != proc.StopMigrated {
		t.Errorf("stops %v, want one %q", got, proc.StopMigrated)
	}
}
