package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/obs"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// These tests run one ingest node alone on an embedded nats-server; the test plays the routers
// (router.place, router notices on ingest.<id>.place) and the workers (replay requests) over NATS.

// stRouter is a stand-in router: it records every place request and answers each with answer
// (nil: no answer, as a router that died mid-request).
type stRouter struct {
	mu     sync.Mutex
	reqs   []wire.PlaceRequest
	at     []time.Time
	answer func(wire.PlaceRequest) *wire.PlaceReply
}

func (r *stRouter) requests() ([]wire.PlaceRequest, []time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]wire.PlaceRequest(nil), r.reqs...), append([]time.Time(nil), r.at...)
}

func (r *stRouter) setAnswer(f func(wire.PlaceRequest) *wire.PlaceReply) {
	r.mu.Lock()
	r.answer = f
	r.mu.Unlock()
}

// placeOn answers every request OK with the call on worker w.
func placeOn(w string) func(wire.PlaceRequest) *wire.PlaceReply {
	return func(req wire.PlaceRequest) *wire.PlaceReply {
		return &wire.PlaceReply{Reply: wire.OK(), Router: "r-test", Epoch: req.Epoch, Placements: []wire.Placement{{Pool: "default", Worker: w}}}
	}
}

// stNode runs node "in-1" with cfg tuned by tune and a stand-in router, and returns the node, the
// router and a client connection.
func stNode(t *testing.T, tune func(*Config)) (*Node, *stRouter, *nats.Conn) {
	t.Helper()
	return stNodeLog(t, tune, zerolog.Nop())
}

// stNodeLog is stNode with the node logging to log.
func stNodeLog(t *testing.T, tune func(*Config), log zerolog.Logger) (*Node, *stRouter, *nats.Conn) {
	t.Helper()
	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	connect := func() *nats.Conn {
		nc, err := nats.Connect(srv.URL())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	client := connect()
	rt := &stRouter{answer: placeOn("w1")}
	if _, err := client.Subscribe(subjects.Place, func(m *nats.Msg) {
		var req wire.PlaceRequest
		if err := json.Unmarshal(m.Data, &req); err != nil {
			t.Errorf("place request %q: %v", m.Data, err)
			return
		}
		rt.mu.Lock()
		rt.reqs = append(rt.reqs, req)
		rt.at = append(rt.at, time.Now())
		answer := rt.answer
		rt.mu.Unlock()
		if rep := answer(req); rep != nil {
			bus.Respond(m, *rep)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := client.Flush(); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.ID = "in-1"
	cfg.HeartbeatInterval = 100 * time.Millisecond
	if tune != nil {
		tune(&cfg)
	}
	h := &obs.Health{}
	n, err := New(cfg, Deps{NC: connect(), Log: log, Health: h})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		for _, c := range n.Calls() {
			c.End("test over")
		}
		cancel()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			t.Error("node did not stop")
		}
		n.Close()
	})
	stEventually(t, 10*time.Second, "node ready", h.Ready)
	return n, rt, client
}

func stEventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stCall starts two-leg PCMU call id and sends frames 0..frames-1 on both legs, each payload
// filled with its sequence number.
func stCall(t *testing.T, n *Node, id string, frames int) *Call {
	t.Helper()
	spec := session.Spec{ID: session.ID{Tenant: "acme", Call: id}, Legs: []session.Leg{
		{Index: 0, Name: "caller", Codec: frame.CodecPCMU, Rate: 8000}, {Index: 1, Name: "agent", Codec: frame.CodecPCMU, Rate: 8000}}}
	c, err := n.StartCall(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	for i := range frames {
		stSend(t, c, i)
	}
	return c
}

func stSend(t *testing.T, c *Call, seq int) {
	t.Helper()
	payload := make([]byte, 160)
	for j := range payload {
		payload[j] = byte(seq)
	}
	for leg := range 2 {
		if err := c.Send(leg, payload, 0); err != nil {
			t.Fatal(err)
		}
	}
}

// stMigrate sends a router's stranded-placement notice (no reply subject).
func stMigrate(t *testing.T, nc *nats.Conn, m wire.Migrate) {
	t.Helper()
	m.V = wire.V
	if m.Tenant == "" {
		m.Tenant = "acme"
	}
	if err := bus.Publish(nc, subjects.IngestVerb("in-1", subjects.IngestVerbPlace), m); err != nil {
		t.Fatal(err)
	}
}

type stFrame struct {
	h       frame.Header
	payload []byte
}

func stFrames(t *testing.T, data []byte) []stFrame {
	t.Helper()
	var out []stFrame
	for len(data) > 0 {
		var h frame.Header
		p, err := h.Unmarshal(data)
		if err != nil {
			t.Fatalf("replay reply: %v", err)
		}
		out = append(out, stFrame{h, append([]byte(nil), p...)})
		data = data[frame.HeaderLen+len(p):]
	}
	return out
}

// A router's worker_down notice re-places the call at the next epoch away from the dead worker,
// resuming where the worker stopped; the new holder's replay gets exactly the frames it asks for
// (replayed, epoch-1 frames as they were sent), the old worker and older epochs are refused.
func TestFailoverReplacesAndRingReplaysExactly(t *testing.T) {
	n, rt, nc := stNode(t, nil)
	c := stCall(t, n, "fo", 10)
	if c.Epoch() != 1 || len(c.Placements()) != 1 || c.Placements()[0].Worker != "w1" {
		t.Fatalf("placed at epoch %d on %+v, want epoch 1 on w1", c.Epoch(), c.Placements())
	}
	events, err := nc.SubscribeSync(subjects.Event("acme", "fo", "replaced"))
	if err != nil {
		t.Fatal(err)
	}
	rt.setAnswer(placeOn("w2"))
	stMigrate(t, nc, wire.Migrate{Call: "fo", Epoch: 1, Worker: "w1", Reason: wire.ReasonWorkerDown,
		Progress: []session.LegSeq{{Leg: 0, Next: 4}}})
	stEventually(t, 10*time.Second, "the re-placement", func() bool { return c.Epoch() == 2 })
	if p := c.Placements(); len(p) != 1 || p[0].Worker != "w2" {
		t.Fatalf("placements after failover %+v, want w2", p)
	}
	reqs, _ := rt.requests()
	last := reqs[len(reqs)-1]
	if len(reqs) != 2 || last.Epoch != 2 || last.Reason != wire.ReasonWorkerDown || len(last.Exclude) != 1 || last.Exclude[0] != "w1" {
		t.Fatalf("re-placement request %+v (of %d), want epoch 2, worker_down, excluding w1", last, len(reqs))
	}
	// Leg 0 resumes where the worker said it stopped; leg 1, unknown, from the oldest frame in the ring.
	want := []session.LegSeq{{Leg: 0, Next: 4}, {Leg: 1, Next: session.FromRingStart}}
	if len(last.Resume) != 2 || last.Resume[0] != want[0] || last.Resume[1] != want[1] {
		t.Fatalf("resume %+v, want %+v", last.Resume, want)
	}
	if m, err := events.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("no replaced event: %v", err)
	} else {
		var ev wire.Event
		if err := json.Unmarshal(m.Data, &ev); err != nil || ev.Epoch != 2 {
			t.Fatalf("replaced event %s: %v, want epoch 2", m.Data, err)
		}
	}
	// Live frames now go out at epoch 2, the first one flagged as the epoch's start.
	live, err := nc.SubscribeSync(subjects.Audio("acme", "fo", "caller"))
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	stSend(t, c, 10)
	m, err := live.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var h frame.Header
	if _, err := h.Unmarshal(m.Data); err != nil || h.Epoch != 2 || h.Seq != 10 || h.Flags&frame.FlagEpochStart == 0 {
		t.Fatalf("first live frame after failover %+v (%v), want epoch 2 seq 10 flagged epoch start", h, err)
	}

	replay := func(worker string, epoch uint32, legs ...wire.LegRange) ([]byte, *wire.Reply, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return wire.RequestReplay(ctx, nc, subjects.IngestVerb("in-1", subjects.IngestVerbReplay),
			wire.ReplayRequest{V: wire.V, Tenant: "acme", Call: "fo", Epoch: epoch, Worker: worker, Legs: legs})
	}
	data, _, err := replay("w2", 2, wire.LegRange{Leg: 0, From: 4, To: 8}, wire.LegRange{Leg: 1, From: session.FromRingStart, To: 3})
	if err != nil {
		t.Fatal(err)
	}
	got := stFrames(t, data)
	type key struct {
		leg uint8
		seq uint32
	}
	var keys []key
	for _, f := range got {
		keys = append(keys, key{f.h.Leg, f.h.Seq})
		if f.h.Flags&frame.FlagReplayed == 0 || f.h.Epoch != 1 || len(f.payload) != 160 || f.payload[0] != byte(f.h.Seq) {
			t.Errorf("replayed frame %+v payload[0]=%v: want the replayed flag, epoch 1 and the payload sent", f.h, f.payload[:1])
		}
	}
	wantKeys := []key{{0, 4}, {0, 5}, {0, 6}, {0, 7}, {1, 0}, {1, 1}, {1, 2}}
	if len(keys) != len(wantKeys) {
		t.Fatalf("replayed %v, want %v", keys, wantKeys)
	}
	for i := range keys {
		if keys[i] != wantKeys[i] {
			t.Fatalf("replayed %v, want %v", keys, wantKeys)
		}
	}
	// Only the holder reads the ring, and only at the call's epoch.
	if _, rep, err := replay("w1", 2, wire.LegRange{Leg: 0, From: 0}); !errors.Is(err, wire.ErrReplayRefused) || rep.Code != wire.CodeBadRequest {
		t.Errorf("replay by the old worker: %v %+v, want %s", err, rep, wire.CodeBadRequest)
	}
	if _, rep, err := replay("w2", 1, wire.LegRange{Leg: 0, From: 0}); !errors.Is(err, wire.ErrReplayRefused) || rep.Code != wire.CodeStale {
		t.Errorf("replay at the superseded epoch: %v %+v, want %s", err, rep, wire.CodeStale)
	}
	// A notice about the old epoch, repeated by another router, changes nothing.
	stMigrate(t, nc, wire.Migrate{Call: "fo", Epoch: 1, Worker: "w1", Reason: wire.ReasonWorkerDown})
	var rep wire.Reply
	if err := bus.Request(context.Background(), nc, subjects.IngestVerb("in-1", subjects.IngestVerbPlace),
		wire.Migrate{V: wire.V, Tenant: "acme", Call: "fo", Epoch: 1, Worker: "w1", Reason: wire.ReasonWorkerDown}, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.OK || rep.Code != wire.CodeStale {
		t.Errorf("stale notice answered %+v, want %s", rep, wire.CodeStale)
	}
	if reqs, _ := rt.requests(); len(reqs) != 2 || c.Epoch() != 2 {
		t.Errorf("stale notices caused %d place requests in all (epoch %d), want 2 (epoch 2)", len(reqs), c.Epoch())
	}
}

// A failover re-placement while no router answers retries at a new epoch each time, with growing
// waits (250 ms doubling, each drawn from its upper half), and the call keeps its old epoch and
// worker until one succeeds.
func TestReplacementBacksOffWhileNoRouterAnswers(t *testing.T) {
	n, rt, nc := stNode(t, func(c *Config) { c.PlaceTimeout = 100 * time.Millisecond })
	c := stCall(t, n, "bo", 3)
	rt.setAnswer(func(wire.PlaceRequest) *wire.PlaceReply { return nil })
	stMigrate(t, nc, wire.Migrate{Call: "bo", Epoch: 1, Worker: "w1", Reason: wire.ReasonWorkerDown})
	// Attempts: 1 at once, then after ≥ 125 ms, ≥ 250 ms, ≥ 500 ms (+ the 100 ms timeout each).
	stEventually(t, 20*time.Second, "four re-placement attempts", func() bool {
		reqs, _ := rt.requests()
		return len(reqs) >= 1+4
	})
	if c.Epoch() != 1 || c.Placements()[0].Worker != "w1" {
		t.Fatalf("call at epoch %d on %+v while no router answered, want epoch 1 on w1", c.Epoch(), c.Placements())
	}
	rt.setAnswer(placeOn("w2"))
	stEventually(t, 20*time.Second, "the re-placement to succeed", func() bool { return c.Epoch() > 1 })
	reqs, at := rt.requests()
	reqs, at = reqs[1:], at[1:] // the first placement
	for i, r := range reqs {
		if r.Epoch != uint32(i+2) || r.Reason != wire.ReasonWorkerDown {
			t.Errorf("attempt %d: epoch %d reason %q, want epoch %d worker_down", i, r.Epoch, r.Reason, i+2)
		}
	}
	for i := 1; i < 4; i++ {
		minGap := time.Duration(125<<(i-1)) * time.Millisecond // the upper half of 250 ms << (i-1)
		if gap := at[i].Sub(at[i-1]); gap < minGap {
			t.Errorf("attempt %d came %v after the previous one, want at least %v", i, gap, minGap)
		}
	}
	final := reqs[len(reqs)-1].Epoch
	if c.Epoch() != final || c.Placements()[0].Worker != "w2" {
		t.Errorf("call at epoch %d on %+v, want epoch %d (the successful attempt's) on w2", c.Epoch(), c.Placements(), final)
	}
}

// A call that ends while its re-placement waits for a router ends at once; the late success does
// not bring it back (no new epoch, no frames), its new worker is told to let the call go, and a
// notice for it afterwards is unknown_call.
func TestMigrateNoticeWhileTheCallEnds(t *testing.T) {
	n, rt, nc := stNode(t, func(c *Config) { c.PlaceTimeout = 5 * time.Second })
	c := stCall(t, n, "end", 3)
	gate := make(chan struct{})
	release := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(release) // a stand-in router blocked on a failed test's gate would never return
	asked := make(chan wire.PlaceRequest, 4)
	rt.setAnswer(func(req wire.PlaceRequest) *wire.PlaceReply {
		asked <- req
		<-gate
		return placeOn("w2")(req)
	})
	audio, err := nc.SubscribeSync(subjects.Audio("acme", "end", "*"))
	if err != nil {
		t.Fatal(err)
	}
	released, err := nc.SubscribeSync(subjects.WorkerVerb("w2", subjects.WorkerVerbRelease))
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	stMigrate(t, nc, wire.Migrate{Call: "end", Epoch: 1, Worker: "w1", Reason: wire.ReasonWorkerDown})
	var replacing wire.PlaceRequest
	select {
	case replacing = <-asked:
	case <-time.After(10 * time.Second):
		t.Fatal("no re-placement request")
	}
	endDone := make(chan struct{})
	go func() { c.End("hangup"); close(endDone) }()
	select {
	case <-endDone:
	case <-time.After(5 * time.Second):
		release()
		t.Fatal("End waited for the re-placement")
	}
	if n.Call(c.ID()) != nil {
		t.Fatal("the ended call is still on the node")
	}
	release()
	// The last frames went out at epoch 1 (after the call's first frames, which the
	// subscription may still see); after the late success nothing else does.
	for lasts := 0; lasts < 2; {
		m, err := audio.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var h frame.Header
		if _, err := h.Unmarshal(m.Data); err != nil || h.Epoch != 1 || (h.Flags&frame.FlagLast != 0) != (h.Seq == 3) || h.Seq > 3 {
			t.Fatalf("frame %+v (%v), want frames 0..2 and the last frame (3) at epoch 1", h, err)
		}
		if h.Flags&frame.FlagLast != 0 {
			lasts++
		}
	}
	// The late success has been answered; give the ingest time to (wrongly) act on it.
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) && c.Epoch() == 1 {
		time.Sleep(5 * time.Millisecond)
	}
	if c.Epoch() != 1 {
		t.Errorf("the ended call moved to epoch %d after the late success", c.Epoch())
	}
	// The worker the late success placed the call on (w2) is released at that epoch; without it
	// w2 would hold the call until its idle reaper or the routers' orphan sweep.
	if m, err := released.NextMsg(5 * time.Second); err != nil {
		t.Errorf("no release for the late placement on w2: %v", err)
	} else {
		var rel wire.Release
		if err := json.Unmarshal(m.Data, &rel); err != nil || rel.Call != "end" || rel.Epoch != replacing.Epoch {
			t.Errorf("release %s (%v), want call end at epoch %d", m.Data, err, replacing.Epoch)
		}
	}
	if err := c.Send(0, make([]byte, 160), 0); !errors.Is(err, ErrEnded) {
		t.Errorf("send after End: %v, want ErrEnded", err)
	}
	if m, err := audio.NextMsg(300 * time.Millisecond); err == nil {
		t.Errorf("a frame went out after the call ended: %d bytes", len(m.Data))
	}
	var rep wire.Reply
	if err := bus.Request(context.Background(), nc, subjects.IngestVerb("in-1", subjects.IngestVerbPlace),
		wire.Migrate{V: wire.V, Tenant: "acme", Call: "end", Epoch: 1, Worker: "w1", Reason: "drain"}, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.OK || rep.Code != wire.CodeUnknown {
		t.Errorf("migration of an ended call answered %+v, want %s", rep, wire.CodeUnknown)
	}
	if reqs, _ := rt.requests(); len(reqs) != 2 {
		t.Errorf("%d place requests, want 2 (the call's and one re-placement)", len(reqs))
	}
}
