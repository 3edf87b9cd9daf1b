package router

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

// router.api.pause finds the ingest that owns the call from its heartbeats and forwards the
// request there with the asker's reply subject: the owner answers the asker.
func TestAPIPauseIsForwardedToTheOwningIngest(t *testing.T) {
	r, nc := testRouter(t)
	got := make(chan wire.PauseRequest, 1)
	sub, err := nc.Subscribe(subjects.IngestVerb("in-9", subjects.IngestVerbPause), func(m *nats.Msg) {
		var req wire.PauseRequest
		_ = json.Unmarshal(m.Data, &req)
		got <- req
		bus.Respond(m, wire.PauseReply{Reply: wire.OK(), Ingest: "in-9", Paused: req.Paused})
	})
	if err != nil {
		t.Fatal(err)
	}
	hb := wire.IngestHeartbeat{V: wire.V, ID: "in-9", IntervalMS: 100, Calls: []wire.IngestCall{{Tenant: "acme", Call: "c1", Epoch: 1,
		Placements: []wire.Placement{{Pool: "default", Worker: "w1"}}}}}
	if err := bus.Publish(nc, subjects.Heartbeat(subjects.Ingest, "in-9"), hb); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(r.Calls()) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the router never saw the ingest's call")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ask := func(req any) (wire.PauseReply, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var rep wire.PauseReply
		err := bus.Request(ctx, nc, subjects.API(VerbPause), req, &rep)
		return rep, err
	}
	rep, err := ask(wire.PauseRequest{V: 1, Tenant: "acme", Call: "c1", Paused: true, By: "agent-7"})
	if err != nil || !rep.OK || rep.Ingest != "in-9" || !rep.Paused {
		t.Fatalf("forwarded pause: %+v %v", rep, err)
	}
	if req := <-got; req.By != "agent-7" || !req.Paused || req.Call != "c1" {
		t.Errorf("the owner got %+v", req)
	}
	for name, tc := range map[string]struct {
		req  any
		code string
	}{
		"unknown call": {wire.PauseRequest{V: 1, Tenant: "acme", Call: "c2", Paused: true}, wire.CodeUnknown},
		"bad token":    {wire.PauseRequest{V: 1, Tenant: "acme", Call: "c1.*", Paused: true}, wire.CodeBadRequest},
		"not json":     {"pause", wire.CodeBadRequest},
	} {
		if rep, err := ask(tc.req); err != nil || rep.OK || rep.Code != tc.code {
			t.Errorf("%s: %+v %v, want %s", name, rep, err, tc.code)
		}
	}
	if err := sub.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	// An owner that stopped answering (it died; its calls died with it) leaves the asker to its
	// timeout: the router never waits on an ingest, so it has nothing to answer.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var none wire.PauseReply
	err = bus.Request(ctx, nc, subjects.API(VerbPause), wire.PauseRequest{V: 1, Tenant: "acme", Call: "c1"}, &none)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("owner gone: %+v %v, want the asker's timeout", none, err)
	}
}
