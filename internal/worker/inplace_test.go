package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/player"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/callrouter/callrouter/internal/worker"
)

// TestAdvanceInPlaceDuringReplay: a worker takes a call fresh at epoch 2 (its epoch-1 instance
// was released, as a router reaps a call whose ingest was away) and asks ingest for a replay on
// its first frame; before that request reaches ingest, ingest re-places the call at epoch 3
// (reason ingest_stall, no resume, as its absence check does) on the same worker, which advances
// the call in place and answers OK. The replay request, built at epoch 2, finds ingest at 3 and is
// refused as stale: the call must not take that for being superseded (it holds epoch 3, and
// ingest publishes to it alone), but go on and process every frame, the last one included.
// (TestIngestConnectionCutLong lost exactly the calls whose epoch 3 went to the worker that had
// just taken epoch 2.) Variations: two advances in quick succession (3, then 4) while the replay
// is in flight, and the call ending soon after.
func TestAdvanceInPlaceDuringReplay(t *testing.T) {
	for _, tc := range []struct {
		name     string
		advances int
		frames   int
	}{
		{"one advance", 1, 150},
		{"two advances, end soon after", 2, 80},
	} {
		t.Run(tc.name, func(t *testing.T) { testAdvanceInPlaceDuringReplay(t, tc.advances, tc.frames) })
	}
}

func testAdvanceInPlaceDuringReplay(t *testing.T, advances, frames int) {
	s := startStack(t, workerConfig(), 1)
	nc, err := s.Connect("router", "", "test")
	if err != nil {
		t.Fatal(err)
	}
	id := session.ID{Tenant: "acme", Call: "adv-0"}
	wid := "worker-1"
	notice := func(epoch uint32) error {
		data, err := json.Marshal(wire.Migrate{V: wire.V, Tenant: id.Tenant, Call: id.Call, Epoch: epoch, Worker: wid, Reason: wire.ReasonIngestStall})
		if err != nil {
			return err
		}
		return nc.Publish(subjects.IngestVerb(s.Ingest.ID(), subjects.IngestVerbPlace), data)
	}
	ingestEpoch := func() uint32 {
		if c := s.Ingest.Call(id); c != nil {
			return c.Epoch()
		}
		return 0
	}
	var asked atomic.Bool
	raced := make(chan error, 1)
	worker.OnReplayAsking(func(got session.ID, epoch uint32) {
		if got != id || epoch != 2 || !asked.CompareAndSwap(false, true) {
			return
		}
		// The replay is in flight: ingest re-places the call at epoch 3 (and 4), on this worker
		// again.
		for e := uint32(2); e < 2+uint32(advances); e++ {
			if err := notice(e); err != nil {
				raced <- err
				return
			}
			for deadline := time.Now().Add(10 * time.Second); ingestEpoch() <= e; time.Sleep(2 * time.Millisecond) {
				if time.Now().After(deadline) {
					raced <- fmt.Errorf("ingest did not re-place the call at epoch %d", e+1)
					return
				}
			}
		}
		raced <- nil
	})
	t.Cleanup(func() { worker.OnReplayAsking(nil) })

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	played := make(chan error, 1)
	go func() {
		r := tone(t, frames)
		_, err := player.Play(ctx, s.Ingest, r, r.Spec(id.Tenant, id.Call, nil), frames, 1)
		played <- err
	}()
	eventually(t, 10*time.Second, "the call's first frames at epoch 1", func() bool { return len(rec.seqsOf(id.String()+"/0")) >= 10 })
	var rep wire.ReleaseReply
	if err := bus.Request(ctx, nc, subjects.WorkerVerb(wid, subjects.WorkerVerbRelease), wire.Release{V: wire.V, Tenant: id.Tenant, Call: id.Call, Epoch: 1, Reason: "reaped"}, &rep); err != nil || !rep.OK {
		t.Fatalf("release: %v %+v", err, rep)
	}
	eventually(t, 10*time.Second, "the worker to let the call go", func() bool { return s.Workers[0].Calls() == 0 })
	if err := notice(1); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-raced:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the worker never asked for a replay at epoch 2")
	}
	if err := <-played; err != nil && !errors.Is(err, ingest.ErrEnded) {
		t.Fatalf("play: %v", err)
	}
	eventually(t, 20*time.Second, "the call to end at the worker", func() bool {
		stops := rec.stopsOf(id.String())
		return slices.Contains(stops, proc.StopEnd) || slices.Contains(stops, proc.StopSuperseded)
	})
	if stops := rec.stopsOf(id.String()); !slices.Equal(stops, []string{proc.StopReleased, proc.StopEnd}) {
		t.Fatalf("stops %v: want [%s %s] (the last frames processed by the call advanced in place)", stops, proc.StopReleased, proc.StopEnd)
	}
	for leg := range 2 {
		k := fmt.Sprintf("%s/%d", id, leg)
		covered := make([]bool, frames)
		for _, q := range rec.seqsOf(k) {
			if int(q) < frames {
				covered[q] = true
			}
		}
		for _, g := range rec.gapsOf(k) {
			if g.Cause == "" {
				t.Errorf("%s: gap %d-%d without a cause", k, g.From, g.To)
			}
			for q := g.From; q <= g.To && int(q) < frames; q++ {
				covered[q] = true
			}
		}
		if i := slices.Index(covered, false); i >= 0 {
			t.Errorf("%s: frame %d neither processed nor in a gap", k, i)
		}
	}
}
