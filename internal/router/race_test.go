package router

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

// TestOfferCrossingAWorkersDrain: the least-loaded worker's last heartbeat says ready, but its
// drain began since, so it refuses the offer as draining. The placement goes to the next worker
// in the same request; the caller never sees the refusal.
func TestOfferCrossingAWorkersDrain(t *testing.T) {
	r, nc := testRouter(t)
	var offered [2]atomic.Int32
	for i, w := range []string{"w1", "w2"} {
		if _, err := nc.Subscribe(subjects.WorkerVerb(w, subjects.WorkerVerbOffer), func(m *nats.Msg) {
			offered[i].Add(1)
			if w == "w1" {
				bus.Respond(m, wire.OfferReply{Reply: wire.Fail(wire.CodeDraining, "worker is draining"), Worker: w})
				return
			}
			bus.Respond(m, wire.OfferReply{Reply: wire.OK(), Worker: w})
		}); err != nil {
			t.Fatal(err)
		}
	}
	// Heartbeats valid for misses × 1 s, longer than the test: w1 idle, w2 half full.
	for _, hb := range []wire.WorkerHeartbeat{
		{V: wire.V, ID: "w1", Pool: "default", Mode: "session", Capacity: 4, Active: 0, Ready: true, IntervalMS: 1000},
		{V: wire.V, ID: "w2", Pool: "default", Mode: "session", Capacity: 4, Active: 2, Ready: true, IntervalMS: 1000},
	} {
		data, _ := json.Marshal(hb)
		if err := nc.Publish(subjects.Heartbeat(subjects.Worker, hb.ID), data); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(r.Workers()) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the router did not see both workers")
		}
		time.Sleep(10 * time.Millisecond)
	}
	spec := session.Spec{ID: session.ID{Tenant: "acme", Call: "c1"}, Legs: []session.Leg{{Index: 0, Name: "a", Codec: frame.CodecPCMU, Rate: 8000}}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var rep wire.PlaceReply
	if err := bus.Request(ctx, nc, subjects.Place, wire.PlaceRequest{V: wire.V, Call: spec, Ingest: "in-1", Epoch: 1, Pools: []string{"default"}}, &rep); err != nil {
		t.Fatal(err)
	}
	if !rep.OK || len(rep.Placements) != 1 || rep.Placements[0].Worker != "w2" {
		t.Fatalf("placement %+v, want w2", rep)
	}
	if offered[0].Load() != 1 || offered[1].Load() != 1 {
		t.Errorf("offers w1 %d, w2 %d; want one each (the idle w1 first)", offered[0].Load(), offered[1].Load())
	}
}
