package worker_test

import (
	"encoding/json"
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
