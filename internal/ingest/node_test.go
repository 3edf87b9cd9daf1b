package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
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
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
)

// testNode runs a node on an embedded server with the given max_payload (0: the default), with a
// stand-in router that places every call on worker w1, and returns the node and a client
// connection.
func testNode(t *testing.T, maxPayload int32) (*Node, *nats.Conn) {
	t.Helper()
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, MaxPayload: maxPayload, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(srv.Shutdown)
	connect := func() *nats.Conn {
		nc, err := nats.Connect(srv.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	client := connect()
	if _, err := client.Subscribe(subjects.Place, func(m *nats.Msg) {
		var req wire.PlaceRequest
		_ = json.Unmarshal(m.Data, &req)
		bus.Respond(m, wire.PlaceReply{Reply: wire.OK(), Epoch: req.Epoch, Placements: []wire.Placement{{Pool: "default", Worker: "w1"}}})
	}); err != nil {
		t.Fatal(err)
	}
	if err := client.Flush(); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.ID = "in-1"
	h := &obs.Health{}
	n, err := New(cfg, Deps{NC: connect(), Log: zerolog.Nop(), Health: h})
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
		<-done
		n.Close()
	})
	deadline := time.Now().Add(10 * time.Second)
	for !h.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("node not ready")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return n, client
}

// pcmCall starts a two-leg 8 kHz L16 call (348-byte frames) and sends frames on both legs.
func pcmCall(t *testing.T, n *Node, frames int) *Call {
	t.Helper()
	spec := session.Spec{ID: session.ID{Tenant: "acme", Call: "c1"}, Legs: []session.Leg{
		{Index: 0, Name: "caller", Codec: frame.CodecL16, Rate: 8000}, {Index: 1, Name: "agent", Codec: frame.CodecL16, Rate: 8000}}}
	c, err := n.StartCall(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 320)
	for i := 0; i < frames; i++ {
		for leg := 0; leg < 2; leg++ {
			if err := c.Send(leg, payload, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	return c
}

func replayReq(legs ...wire.LegRange) wire.ReplayRequest {
	return wire.ReplayRequest{V: wire.V, Tenant: "acme", Call: "c1", Epoch: 1, Worker: "w1", Legs: legs}
}

func ask(t *testing.T, nc *nats.Conn, v any) (*nats.Msg, error) {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return nc.Request(subjects.IngestVerb("in-1", subjects.IngestVerbReplay), data, 5*time.Second)
}

func TestReplayRequestsAreBoundedBeforeWork(t *testing.T) {
	n, nc := testNode(t, 0)
	pcmCall(t, n, 10)
	many := make([]wire.LegRange, 10000) // used to copy the ring once per entry
	cases := map[string]any{
		"too many legs": replayReq(many...),
		"a leg twice":   replayReq(wire.LegRange{Leg: 0}, wire.LegRange{Leg: 0}),
		"no such leg":   replayReq(wire.LegRange{Leg: 5}),
		"bad range":     replayReq(wire.LegRange{Leg: 0, From: 7, To: 3}),
		"bad from":      replayReq(wire.LegRange{Leg: 0, From: -9}),
		"no legs":       replayReq(),
		"oversized":     map[string]string{"tenant": "acme", "call": "c1", "pad": strings.Repeat("x", wire.MaxControlBytes)},
	}
	for name, req := range cases {
		msg, err := ask(t, nc, req)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		var rep wire.Reply
		if len(msg.Data) == 0 || msg.Data[0] != '{' || json.Unmarshal(msg.Data, &rep) != nil || rep.Code != wire.CodeBadRequest {
			t.Errorf("%s: reply of %d bytes %.80q, want a %s error", name, len(msg.Data), msg.Data, wire.CodeBadRequest)
		}
	}
	// A well-formed request still gets its frames.
	msg, err := ask(t, nc, replayReq(wire.LegRange{Leg: 0, From: 2, To: 5}, wire.LegRange{Leg: 1, From: session.FromRingStart}))
	if err != nil {
		t.Fatal(err)
	}
	if want := 3*(frame.HeaderLen+320) + 10*(frame.HeaderLen+320); len(msg.Data) != want {
		t.Errorf("replay of 13 frames: %d bytes, want %d", len(msg.Data), want)
	}
}

func TestReplayLargerThanMaxPayloadComesInParts(t *testing.T) {
	const maxPayload = 16 << 10 // 16 KiB: 100 frames of 348 bytes on each leg need five parts
	n, nc := testNode(t, maxPayload)
	pcmCall(t, n, 100)
	req := replayReq(wire.LegRange{Leg: 0, From: session.FromRingStart}, wire.LegRange{Leg: 1, From: 10, To: 60})
	first, err := ask(t, nc, req)
	if err != nil {
		t.Fatalf("first part: %v", err)
	}
	if len(first.Data) > maxPayload || first.Header.Get(wire.ReplayNextHeader) == "" {
		t.Fatalf("first part of %d bytes with %s %q: want at most %d bytes and a continuation", len(first.Data),
			wire.ReplayNextHeader, first.Header.Get(wire.ReplayNextHeader), maxPayload)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	all, rep, err := wire.RequestReplay(ctx, nc, subjects.IngestVerb("in-1", subjects.IngestVerbReplay), req)
	if err != nil {
		t.Fatalf("RequestReplay: %v (%+v)", err, rep)
	}
	var got []string
	for buf := all; len(buf) > 0; {
		var h frame.Header
		p, err := h.Unmarshal(buf)
		if err != nil {
			t.Fatal(err)
		}
		if !h.Has(frame.FlagReplayed) {
			t.Fatalf("frame %d/%d not flagged replayed", h.Leg, h.Seq)
		}
		got = append(got, fmt.Sprintf("%d/%d", h.Leg, h.Seq))
		buf = buf[frame.HeaderLen+len(p):]
	}
	var want []string
	for s := 0; s < 100; s++ {
		want = append(want, fmt.Sprintf("0/%d", s))
	}
	for s := 10; s < 60; s++ {
		want = append(want, fmt.Sprintf("1/%d", s))
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("replayed %d frames %v\nwant %d %v", len(got), got, len(want), want)
	}
}

func TestPanicInAHandlerIsContained(t *testing.T) {
	var once atomic.Bool
	handlerHook = func(where string) {
		if where == "ingest_replay" && once.CompareAndSwap(false, true) {
			panic("injected")
		}
	}
	t.Cleanup(func() { handlerHook = nil })
	n, nc := testNode(t, 0)
	pcmCall(t, n, 3)
	before := testutil.ToFloat64(guard.Panics.WithLabelValues("ingest_replay"))
	data, _ := json.Marshal(replayReq(wire.LegRange{Leg: 0}))
	if _, err := nc.Request(subjects.IngestVerb("in-1", subjects.IngestVerbReplay), data, 500*time.Millisecond); err == nil {
		t.Error("the request whose handler panicked was answered")
	}
	msg, err := ask(t, nc, replayReq(wire.LegRange{Leg: 0}))
	if err != nil {
		t.Fatalf("the node stopped serving after a panic: %v", err)
	}
	if len(msg.Data) != 3*(frame.HeaderLen+320) {
		t.Errorf("replay after the panic: %d bytes", len(msg.Data))
	}
	if got := testutil.ToFloat64(guard.Panics.WithLabelValues("ingest_replay")) - before; got != 1 {
		t.Errorf("panics counted: %v, want 1", got)
	}
}

func TestReplacementsAreRefusedOnceShutdownBegins(t *testing.T) {
	n, nc := testNode(t, 0)
	c := pcmCall(t, n, 3)
	n.g.Close() // what Run does once its calls are drained, before it unsubscribes
	var rep wire.Reply
	req := wire.Migrate{V: wire.V, Tenant: "acme", Call: "c1", Epoch: c.Epoch(), Worker: "w1", Reason: "drain"}
	if err := bus.Request(context.Background(), nc, subjects.IngestVerb("in-1", subjects.IngestVerbPlace), req, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.OK || rep.Code != wire.CodeDraining {
		t.Errorf("migration during shutdown: %+v, want %s", rep, wire.CodeDraining)
	}
	if got := c.replacing.Load(); got != 0 {
		t.Errorf("%d re-placements counted as running", got)
	}
}

// lockedBuffer is a bytes.Buffer for a logger that several goroutines write to.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestCallLogCarriesTheCall: a call's log lines carry the node, the call's tenant and id and,
// once placed, its epoch (a hook on the node's logger, not a copy of its context per call).
func TestCallLogCarriesTheCall(t *testing.T) {
	var out lockedBuffer
	n, _, _ := stNodeLog(t, nil, zerolog.New(&out))
	c, err := n.StartCall(context.Background(), session.Spec{ID: session.ID{Tenant: "acme", Call: "logged"},
		Legs: []session.Leg{{Index: 0, Name: "caller", Codec: frame.CodecPCMU, Rate: 8000}}})
	if err != nil {
		t.Fatal(err)
	}
	c.End("hangup")
	want := map[string]bool{"call placed": false, "call ended": false}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var e struct {
			Ingest, Tenant, Call, Message string
			Epoch                         uint32
		}
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if _, ok := want[e.Message]; !ok {
			continue
		}
		want[e.Message] = true
		if e.Ingest != "in-1" || e.Tenant != "acme" || e.Call != "logged" || e.Epoch != c.Epoch() {
			t.Errorf("%q logged as %s; want ingest in-1, tenant acme, call logged, epoch %d", e.Message, line, c.Epoch())
		}
	}
	for m, seen := range want {
		if !seen {
			t.Errorf("no %q line in the log:\n%s", m, out.String())
		}
	}
}
