package router

import (
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/obs"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
)

// testRouter runs a router on an embedded server and returns it with a client connection.
func testRouter(t *testing.T, tune ...func(*Config)) (*Router, *nats.Conn) {
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
	cfg := DefaultConfig()
	cfg.ID = "r1"
	cfg.HeartbeatInterval = 100 * time.Millisecond
	for _, f := range tune {
		f(&cfg)
	}
	h := &obs.Health{}
	r, err := New(cfg, Deps{NC: conn(), Log: zerolog.Nop(), Health: h})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; r.Close() })
	deadline := time.Now().Add(10 * time.Second)
	for !h.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("router not ready")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return r, conn()
}

func TestRouterPanicInAHandlerIsContained(t *testing.T) {
	var once atomic.Bool
	handlerHook = func(where string) {
		if where == "router_api" && once.CompareAndSwap(false, true) {
			panic("injected")
		}
	}
	t.Cleanup(func() { handlerHook = nil })
	_, nc := testRouter(t)
	before := testutil.ToFloat64(guard.Panics.WithLabelValues("router_api"))
	if _, err := nc.Request(subjects.APIPrefix+VerbWorkers, nil, 500*time.Millisecond); err == nil {
		t.Error("the request whose handler panicked was answered")
	}
	var rep wire.WorkersReply
	if err := bus.Request(context.Background(), nc, subjects.APIPrefix+VerbWorkers, struct{}{}, &rep); err != nil || !rep.OK {
		t.Fatalf("the router stopped serving after a panic: %v %+v", err, rep)
	}
	if got := testutil.ToFloat64(guard.Panics.WithLabelValues("router_api")) - before; got != 1 {
		t.Errorf("panics counted: %v, want 1", got)
	}
}

func TestPlaceRequestsAreBounded(t *testing.T) {
	_, nc := testRouter(t)
	spec := session.Spec{ID: session.ID{Tenant: "acme", Call: "c1"}, Legs: []session.Leg{{Index: 0, Name: "a", Codec: frame.CodecPCMU, Rate: 8000}}}
	base := func() wire.PlaceRequest {
		return wire.PlaceRequest{V: wire.V, Call: spec, Ingest: "in-1", Epoch: 1, Pools: []string{"default"}}
	}
	many := base()
	for i := 0; i < 100; i++ {
		many.Pools = append(many.Pools, "p"+strings.Repeat("x", i%5)+string(rune('a'+i%26)))
	}
	twice := base()
	twice.Pools = []string{"default", "default"}
	resume := base()
	resume.Resume = []session.LegSeq{{Leg: 0}, {Leg: 1}, {Leg: 2}}
	exclude := base()
	for i := 0; i < 1000; i++ {
		exclude.Exclude = append(exclude.Exclude, "w")
	}
	huge := map[string]string{"pad": strings.Repeat("x", wire.MaxControlBytes)}
	for name, req := range map[string]any{"many pools": many, "a pool twice": twice, "resume per leg": resume, "exclude": exclude, "oversized": huge} {
		var rep wire.PlaceReply
		if err := bus.Request(context.Background(), nc, subjects.Place, req, &rep); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if rep.OK || rep.Code != wire.CodeBadRequest {
			t.Errorf("%s: %+v, want %s", name, rep.Reply, wire.CodeBadRequest)
		}
	}
}

func TestHeartbeatWithAnIntervalNoOneCouldMissIsRefused(t *testing.T) {
	r, nc := testRouter(t)
	for _, ms := range []int{0, 3_600_000} {
		data, _ := json.Marshal(wire.WorkerHeartbeat{V: wire.V, ID: "w1", Pool: "default", Mode: "session", Capacity: 4, Ready: true, IntervalMS: ms})
		if err := nc.Publish(subjects.Heartbeat(subjects.Worker, "w1"), data); err != nil {
			t.Fatal(err)
		}
	}
	data, _ := json.Marshal(wire.WorkerHeartbeat{V: wire.V, ID: "w2", Pool: "default", Mode: "session", Capacity: 4, Ready: true, IntervalMS: 100})
	if err := nc.Publish(subjects.Heartbeat(subjects.Worker, "w2"), data); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(r.Workers()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the valid heartbeat was not taken")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if ws := r.Workers(); len(ws) != 1 || ws[0].ID != "w2" {
		t.Errorf("workers %+v, want only w2", ws)
	}
}

func TestColdRouterWaitsForWorkersInsteadOfRefusing(t *testing.T) {
	// Misses 20 × 100 ms: the router is cold for 2.1 s after it starts.
	r, nc := testRouter(t, func(c *Config) { c.Misses = 20 })
	if _, err := nc.Subscribe(subjects.WorkerVerb("w1", subjects.WorkerVerbOffer), func(m *nats.Msg) {
		bus.Respond(m, wire.OfferReply{Reply: wire.OK(), Worker: "w1"})
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	spec := session.Spec{ID: session.ID{Tenant: "acme", Call: "c1"}, Legs: []session.Leg{{Index: 0, Name: "a", Codec: frame.CodecPCMU, Rate: 8000}}}
	type result struct {
		rep wire.PlaceReply
		err error
	}
	res := make(chan result, 1)
	go func() {
		var rep wire.PlaceReply
		err := bus.Request(context.Background(), nc, subjects.Place, wire.PlaceRequest{V: wire.V, Call: spec, Ingest: "in-1", Epoch: 1, Pools: []string{"default"}}, &rep)
		res <- result{rep, err}
	}()
	// The worker's first heartbeat comes after the request.
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(r.m.coldWaits) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the placement did not wait")
		}
		time.Sleep(10 * time.Millisecond)
	}
	data, _ := json.Marshal(wire.WorkerHeartbeat{V: wire.V, ID: "w1", Pool: "default", Mode: "session", Capacity: 4, Ready: true, IntervalMS: 100})
	if err := nc.Publish(subjects.Heartbeat(subjects.Worker, "w1"), data); err != nil {
		t.Fatal(err)
	}
	got := <-res
	if got.err != nil || !got.rep.OK || len(got.rep.Placements) != 1 || got.rep.Placements[0].Worker != "w1" {
		t.Errorf("placement on a cold router: %v %+v, want w1", got.err, got.rep)
	}
}
