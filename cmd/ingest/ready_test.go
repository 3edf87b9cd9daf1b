package main

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/sources"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// playingService is the service of a node on an embedded server whose -play player starts one
// call (for as long as the test runs) the moment it is started, with a stand-in router placing
// every call on w1. dial(n, connect) opens the node's extra publishing connections. It returns
// the service, its node, its metrics and the place requests the router has had.
func playingService(t *testing.T, dial func(n *ingest.Node, connect func() (*nats.Conn, error)) (*nats.Conn, error)) (*service, *ingest.Node, *prometheus.Registry, *atomic.Int32) {
	t.Helper()
	ns, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Close)
	connect := func() (*nats.Conn, error) {
		bc := bus.DefaultConfig()
		bc.URL = ns.URL()
		nc, err := bus.Connect(bc, zerolog.Nop())
		if err == nil {
			t.Cleanup(nc.Close)
		}
		return nc, err
	}
	router, err := connect()
	if err != nil {
		t.Fatal(err)
	}
	var places atomic.Int32
	if _, err := router.Subscribe(subjects.Place, func(m *nats.Msg) {
		places.Add(1)
		var req wire.PlaceRequest
		_ = json.Unmarshal(m.Data, &req)
		bus.Respond(m, wire.PlaceReply{Reply: wire.OK(), Epoch: req.Epoch, Placements: []wire.Placement{{Pool: "default", Worker: "w1"}}})
	}); err != nil {
		t.Fatal(err)
	}
	if err := router.Flush(); err != nil {
		t.Fatal(err)
	}
	own, err := connect()
	if err != nil {
		t.Fatal(err)
	}
	cfg := ingest.DefaultConfig()
	cfg.ID = "ing-early"
	reg := prometheus.NewRegistry()
	var n *ingest.Node
	if n, err = ingest.New(cfg, ingest.Deps{NC: own, Log: zerolog.Nop(), Registry: reg, Dial: func(int) (*nats.Conn, error) { return dial(n, connect) }}); err != nil {
		t.Fatal(err)
	}
	src, err := sources.New(sources.Config{}, sources.Deps{Log: zerolog.Nop(), Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	rec := &filesrc.Recording{Codec: frame.CodecPCMU, Rate: 8000, Frames: [][][]byte{{make([]byte, 160)}}}
	return &service{n: n, rec: rec, p: playFlags{calls: 1, tenant: "demo", callPrefix: "early", frames: 1 << 30, speed: 1}, log: zerolog.Nop(), src: src}, n, reg, &places
}

// TestCallsStartOnceTheNodeIsReady: a call that starts the moment the sources and players do
// (a -play player) has its frames on one of the node's publishing connections, not on the
// node's own (control) connection, which it would keep for life. The node's dial waits up to a
// second for a call to start first, so that a player started before the node is ready starts
// its call while the node has no other connection.
func TestCallsStartOnceTheNodeIsReady(t *testing.T) {
	svc, n, reg, _ := playingService(t, func(n *ingest.Node, connect func() (*nats.Conn, error)) (*nats.Conn, error) {
		for deadline := time.Now().Add(time.Second); len(n.Calls()) == 0 && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
		return connect()
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()

	for deadline := time.Now().Add(20 * time.Second); len(n.Calls()) == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the player started no call")
		}
	}
	calls := connCalls(t, reg)
	if calls["1"] != 0 || calls["2"] != 1 {
		t.Errorf("calls per publishing connection %v, want none on the node's own (1), the call on 2", calls)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after ctx ended")
	}
}

// TestNodeFailingBeforeReadyStartsNoCall: when the node's Run fails before it is ready (its
// publishing connection cannot be opened), the service returns that error and no player or
// source has started a call.
func TestNodeFailingBeforeReadyStartsNoCall(t *testing.T) {
	svc, n, _, places := playingService(t, func(*ingest.Node, func() (*nats.Conn, error)) (*nats.Conn, error) {
		return nil, errors.New("refused")
	})
	done := make(chan error, 1)
	go func() { done <- svc.Run(t.Context()) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("Run: %v, want the dial's error", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return with the node failed")
	}
	if got := places.Load(); got != 0 || len(n.Calls()) != 0 {
		t.Errorf("%d place requests, %d calls, want none", got, len(n.Calls()))
	}
}

// connCalls returns callrouter_ingest_publish_conn_calls by connection (its conn label).
func connCalls(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "callrouter_ingest_publish_conn_calls" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "conn" {
					out[l.GetValue()] = m.GetGauge().GetValue()
				}
			}
		}
	}
	return out
}
