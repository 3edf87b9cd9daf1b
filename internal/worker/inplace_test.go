package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/nats-io/nats.go"
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
// is in flight, and the call ending at once after the advance.
func TestAdvanceInPlaceDuringReplay(t *testing.T) {
	for _, tc := range []struct {
		name     string
		advances int
		after    int // frames sent after the advance, before the end
	}{
		{"one advance", 1, 25},
		{"two advances, end at once", 2, 2},
	} {
		t.Run(tc.name, func(t *testing.T) { testAdvanceInPlaceDuringReplay(t, tc.advances, tc.after) })
	}
}

func testAdvanceInPlaceDuringReplay(t *testing.T, advances, after int) {
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
	c, err := s.Ingest.StartCall(ctx, spec(id.Call))
	if err != nil {
		t.Fatal(err)
	}
	// Frames at real time on both legs until told how many more to send; then the call ends.
	last := make(chan int, 1)
	sent := make(chan error, 1)
	var count atomic.Int64 // frames sent per leg
	go func() {
		payload := make([]byte, 160)
		more := -1
		for i := 0; i < 3000 && more != 0; i++ {
			for leg := range 2 {
				if err := c.Send(leg, payload, 0); err != nil {
					sent <- err
					return
				}
			}
			count.Add(1)
			select {
			case n := <-last:
				more = n
			default:
			}
			if more > 0 {
				more--
			}
			time.Sleep(frame.Duration)
		}
		c.End("hangup")
		sent <- nil
	}()
	eventually(t, 10*time.Second, "the call's first frames at epoch 1", func() bool { return len(rec.seqsOf(id.String()+"/0")) >= 10 })
	var rep wire.ReleaseReply
	if err := bus.Request(ctx, nc, subjects.WorkerVerb(wid, subjects.WorkerVerbRelease), wire.Release{V: wire.V, Tenant: id.Tenant, Call: id.Call, Epoch: 1, Reason: "reaped"}, &rep); err != nil || !rep.OK {
		t.Fatalf("release: %v %+v", err, rep)
	}
	eventually(t, 10*time.Second, "the worker to let the call go", func() bool { return s.Workers[0].Calls() == 0 })
	// Frames published to nobody, which the worker taking the call again asks to be replayed.
	gone := count.Load()
	eventually(t, 10*time.Second, "frames published after the release", func() bool { return count.Load() >= gone+3 })
	if err := notice(1); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-raced:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		var pl []wire.Placement
		if ic := s.Ingest.Call(id); ic != nil {
			pl = ic.Placements()
		}
		t.Fatalf("the worker never asked for a replay at epoch 2: ingest at epoch %d on %v, worker holds %d calls, stops %v, gaps %v",
			ingestEpoch(), pl, s.Workers[0].Calls(), rec.stopsOf(id.String()), rec.gapsOf(id.String()+"/0"))
	}
	last <- after
	if err := <-sent; err != nil {
		t.Fatalf("send: %v", err)
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
		seqs := rec.seqsOf(k)
		covered := make([]bool, slices.Max(seqs)+1)
		for _, q := range seqs {
			covered[q] = true
		}
		for _, g := range rec.gapsOf(k) {
			if g.Cause == "" {
				t.Errorf("%s: gap %d-%d without a cause", k, g.From, g.To)
			}
			for q := g.From; q <= g.To && int(q) < len(covered); q++ {
				covered[q] = true
			}
		}
		if i := slices.Index(covered, false); i >= 0 {
			t.Errorf("%s: frame %d neither processed nor in a gap", k, i)
		}
	}
}

// TestAdvanceInPlaceDuringEpochStartReplay: a worker that took a call at epoch 2 from its epoch
// start (no resume: a drain's hand-over, a cluster's late interest) meets a first frame without
// the epoch-start flag and asks for the epoch's frames; an offer advances the call to epoch 3
// while the request is on its way, and ingest refuses it as stale. Asked again, "the epoch start"
// would be epoch 3's, past the frame that set the replay off: the worker asks from the ring's
// start instead and keeps the frames of the epoch it joined at, none of the previous owner's.
func TestAdvanceInPlaceDuringEpochStartReplay(t *testing.T) {
	l := startLone(t, workerConfig())
	var at atomic.Uint32 // the epoch the fake ingest holds the call at
	at.Store(2)
	// Its ring holds frames 0..4 of each leg at epoch 1 (the previous owner's), 5..9 at epoch 2.
	sub, err := l.nc.Subscribe(subjects.IngestVerb("in1", subjects.IngestVerbReplay), func(m *nats.Msg) {
		var req wire.ReplayRequest
		if json.Unmarshal(m.Data, &req) != nil || len(req.Legs) != 1 {
			return
		}
		if cur := at.Load(); req.Epoch < cur {
			bus.Respond(m, wire.Fail(wire.CodeStale, fmt.Sprintf("call is at epoch %d", cur)))
			return
		}
		r := req.Legs[0]
		var out []byte
		for seq := uint32(0); seq < 10; seq++ {
			epoch := uint32(1 + seq/5)
			switch {
			case r.From == session.FromEpochStart && epoch != at.Load(),
				r.From >= 0 && int64(seq) < r.From,
				r.To != 0 && int64(seq) >= r.To:
				continue
			}
			h := frame.Header{Flags: frame.FlagReplayed, Codec: frame.CodecPCMU, Leg: r.Leg, SampleRate: 8000,
				Epoch: epoch, Seq: seq, MediaTS: seq * 160, Capture: time.Now().UnixNano(), DurationUS: 20000}
			out, _ = frame.Append(out, &h, make([]byte, 160))
		}
		_ = m.Respond(out)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	id := spec("start").ID
	var asked atomic.Bool
	raced := make(chan error, 1)
	worker.OnReplayAsking(func(got session.ID, epoch uint32) {
		if got != id || epoch != 2 || !asked.CompareAndSwap(false, true) {
			return
		}
		data, _ := json.Marshal(wire.Offer{V: wire.V, Call: spec("start"), Ingest: "in1", Pool: "default", Epoch: 3, Reason: wire.ReasonIngestStall})
		m, err := l.nc.Request(subjects.WorkerVerb(l.id, subjects.WorkerVerbOffer), data, 5*time.Second)
		var rep wire.OfferReply
		if err == nil {
			err = json.Unmarshal(m.Data, &rep)
		}
		if err == nil && !rep.OK {
			err = fmt.Errorf("offer at epoch 3 refused: %+v", rep.Reply)
		}
		at.Store(3) // ingest switches once the offer is answered
		raced <- err
	})
	t.Cleanup(func() { worker.OnReplayAsking(nil) })
	if r := l.offer(t, wire.Offer{Call: spec("start"), Epoch: 2}); !r.OK {
		t.Fatalf("offer refused: %+v", r.Reply)
	}
	l.send(t, "start", 0, 2, 10, 0)
	select {
	case err := <-raced:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the worker never asked for a replay at epoch 2")
	}
	l.send(t, "start", 1, 3, 10, frame.FlagEpochStart)
	l.send(t, "start", 0, 3, 11, 0)
	l.send(t, "start", 1, 3, 11, 0)
	want := []uint32{5, 6, 7, 8, 9, 10, 11}
	k := id.String() + "/0"
	eventually(t, 5*time.Second, k+" replayed and live frames", func() bool { return len(rec.seqsOf(k)) >= len(want) })
	if got := rec.seqsOf(k); !slices.Equal(got, want) {
		t.Errorf("%s: frames %v, want %v", k, got, want)
	}
	if g := rec.gapsOf(k); len(g) != 0 {
		t.Errorf("%s: gaps %v", k, g)
	}
	if s := rec.stopsOf(id.String()); len(s) != 0 {
		t.Errorf("call stopped: %v", s)
	}
}
