package worker_test

import (
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/callrouter/callrouter/internal/worker"
)

// The sequence behind the double-processed calls of a saturated load test (g1-2500: 438 calls
// held by a second worker until the orphan sweep released them, 78,858 frames processed twice):
// the router's offer to a loaded worker times out, the router abandons it and places the call at
// the same epoch elsewhere; the worker handles the abandoning release first (it finds nothing)
// and the offer, which waited behind others in its subscription, afterwards. That offer must be
// refused, or two workers process every frame of the call until the orphan sweep. An offer the
// release did not abandon (a newer epoch, another call) and a release of another kind change
// nothing.
func TestOfferAbandonedBeforeItArrivesIsRefused(t *testing.T) {
	l := startLone(t, workerConfig())

	// The abandoning release comes first: nothing to release yet.
	if r := l.release(t, wire.Release{Tenant: "acme", Call: "late", Epoch: 1, Reason: wire.ReasonOfferAbandoned}); r.Code != wire.CodeUnknown {
		t.Fatalf("release before the offer answered %+v, want %s", r.Reply, wire.CodeUnknown)
	}
	// The late offer: refused, and the call's frames (the other worker's) are not processed here.
	if r := l.offer(t, wire.Offer{Call: spec("late"), Epoch: 1}); r.OK || r.Code != wire.CodeStale {
		t.Fatalf("offer abandoned before it arrived answered %+v, want %s", r.Reply, wire.CodeStale)
	}
	for seq := range uint32(3) {
		l.send(t, "late", 0, 1, seq, 0)
	}
	if w, e := holder(t, l, "late"); w != "" {
		t.Fatalf("abandoned call held by %q at epoch %d", w, e)
	}
	if n := l.w.Calls(); n != 0 {
		t.Fatalf("worker holds %d calls, want 0", n)
	}

	// A later placement of the same call (a new epoch) is taken and processed.
	if r := l.offer(t, wire.Offer{Call: spec("late"), Epoch: 2}); !r.OK {
		t.Fatalf("offer at a newer epoch refused: %+v", r.Reply)
	}
	l.send(t, "late", 0, 2, 3, frame.FlagEpochStart)
	eventually(t, 5*time.Second, "the newer epoch's frame processed", func() bool { return len(rec.seqsOf("acme/late/0")) == 1 })
	if got := rec.seqsOf("acme/late/0"); got[0] != 3 {
		t.Errorf("processed %v, want only the epoch 2 frame 3", got)
	}

	// Only an abandonment is remembered: a release of another kind that found nothing does not
	// keep the call's offer out.
	if r := l.release(t, wire.Release{Tenant: "acme", Call: "other", Epoch: 1, Reason: "orphan"}); r.Code != wire.CodeUnknown {
		t.Fatalf("orphan release answered %+v, want %s", r.Reply, wire.CodeUnknown)
	}
	if r := l.offer(t, wire.Offer{Call: spec("other"), Epoch: 1}); !r.OK {
		t.Fatalf("offer after an orphan release of nothing refused: %+v", r.Reply)
	}
}

// The more common order on a loaded worker: the offer, which waited an offer timeout in its
// subscription, is being set up when the abandoning release (sent at that timeout) is handled.
// The offer is refused at the moment it would be accepted, not accepted and the call started only
// to be stopped as superseded (34–73 times in a loaded run): no slot held, nothing processed.
func TestOfferAbandonedWhileSetUpIsRefused(t *testing.T) {
	l := startLone(t, workerConfig())
	id := session.ID{Tenant: "acme", Call: "mid"}
	var once sync.Once
	worker.OnOfferSubscribed(func(session.ID, uint32) {
		once.Do(func() {
			if err := l.nc.Publish(subjects.WorkerVerb(l.id, subjects.WorkerVerbRelease),
				[]byte(`{"v":1,"tenant":"acme","call":"mid","epoch":1,"reason":"`+wire.ReasonOfferAbandoned+`"}`)); err != nil {
				t.Error(err)
				return
			}
			deadline := time.Now().Add(10 * time.Second)
			for !worker.Abandoned(l.w, id, 1) && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
		})
	})
	t.Cleanup(func() { worker.OnOfferSubscribed(nil) })
	if r := l.offer(t, wire.Offer{Call: spec("mid"), Epoch: 1}); r.OK || r.Code != wire.CodeStale {
		t.Fatalf("offer abandoned while it was set up answered %+v, want %s", r.Reply, wire.CodeStale)
	}
	eventually(t, 10*time.Second, "no call held", func() bool { return l.w.Calls() == 0 })
	if n := metric(t, l.reg, "callrouter_worker_calls_ended_total", map[string]string{"reason": "superseded"}); n != 0 {
		t.Errorf("%v calls ended superseded; want none started", n)
	}
	if got := rec.stopsOf("acme/mid"); len(got) != 0 {
		t.Errorf("the call was started and stopped (%v)", got)
	}
}
