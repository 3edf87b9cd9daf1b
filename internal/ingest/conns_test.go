package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/obs"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// connsNode runs a node publishing frames on conns connections on an embedded server, with a
// stand-in router that places every call on worker w1, and one call filling a connection (so
// that calls take the connections in turn, as they do past CallsPerPublishConn a connection). It returns the node, its health, the
// server, a client connection and the extra connections the node dialled (which never
// reconnect, so that a test can cut one).
func connsNode(t *testing.T, conns int) (*Node, *obs.Health, *server.Server, *nats.Conn, func() []*nats.Conn) {
	t.Helper()
	return connsNodeWith(t, conns, obs.NewRegistry(), nil, time.Hour)
}

// connsNodeWith is connsNode registering the node's metrics with reg, with tune (may be nil)
// applied to its config and extra connections that reconnect after reconnect.
func connsNodeWith(t *testing.T, conns int, reg *prometheus.Registry, tune func(*Config), reconnect time.Duration) (*Node, *obs.Health, *server.Server, *nats.Conn, func() []*nats.Conn) {
	t.Helper()
	return connsNodeGated(t, conns, reg, tune, reconnect, nil)
}

// connsNodeGated is connsNodeWith calling gate (may be nil) with i before dialling the node's
// i-th extra connection.
func connsNodeGated(t *testing.T, conns int, reg *prometheus.Registry, tune func(*Config), reconnect time.Duration, gate func(i int)) (*Node, *obs.Health, *server.Server, *nats.Conn, func() []*nats.Conn) {
	t.Helper()
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(srv.Shutdown)
	connect := func(opts ...nats.Option) (*nats.Conn, error) {
		nc, err := nats.Connect(srv.ClientURL(), opts...)
		if err == nil {
			t.Cleanup(nc.Close)
		}
		return nc, err
	}
	client, err := connect()
	if err != nil {
		t.Fatal(err)
	}
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
	own, err := connect()
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var extra []*nats.Conn
	dial := func(i int) (*nats.Conn, error) {
		if gate != nil {
			gate(i)
		}
		nc, err := connect(nats.ReconnectWait(reconnect), nats.ReconnectJitter(0, 0))
		if err == nil {
			mu.Lock()
			extra = append(extra, nc)
			mu.Unlock()
		}
		return nc, err
	}
	cfg := DefaultConfig()
	cfg.ID = "in-1"
	cfg.PublishConns = conns
	if tune != nil {
		tune(&cfg)
	}
	h := &obs.Health{}
	n, err := New(cfg, Deps{NC: own, Log: zerolog.Nop(), Health: h, Registry: reg, Dial: dial})
	if err != nil {
		t.Fatal(err)
	}
	n.fill = 1
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
	for h.ReadyErr() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("node not ready: %v", h.ReadyErr())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return n, h, srv, client, func() []*nats.Conn {
		mu.Lock()
		defer mu.Unlock()
		return append([]*nats.Conn(nil), extra...)
	}
}

func twoLegSpec(call string) session.Spec {
	return session.Spec{ID: session.ID{Tenant: "acme", Call: call}, Legs: []session.Leg{
		{Index: 0, Name: "caller", Codec: frame.CodecPCMU, Rate: 8000}, {Index: 1, Name: "agent", Codec: frame.CodecPCMU, Rate: 8000}}}
}

func TestPublishConnsValidation(t *testing.T) {
	for _, conns := range []int{-1, MaxPublishConns + 1} {
		cfg := DefaultConfig()
		cfg.ID, cfg.PublishConns = "in-1", conns
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "-nats-publish-conns") {
			t.Errorf("PublishConns %d: %v, want an error naming -nats-publish-conns", conns, err)
		}
	}
	cfg := DefaultConfig()
	cfg.ID, cfg.PublishConns = "in-1", 2
	if _, err := New(cfg, Deps{Log: zerolog.Nop()}); err == nil || !strings.Contains(err.Error(), "-nats-publish-conns") {
		t.Errorf("2 connections and no Dial: %v, want an error naming -nats-publish-conns", err)
	}
}

// New opens no connection, whatever Config.PublishConns: Run opens them, and a node is ready
// only once they are up.
func TestNewDialsNothing(t *testing.T) {
	for _, conns := range []int{0, 3} {
		cfg := DefaultConfig()
		cfg.ID, cfg.PublishConns = "in-1", conns
		dials := 0
		n, err := New(cfg, Deps{Log: zerolog.Nop(), Dial: func(int) (*nats.Conn, error) {
			dials++
			return nil, errors.New("no dialling in New")
		}})
		if err != nil {
			t.Fatalf("PublishConns %d: %v", conns, err)
		}
		if dials != 0 || n.PublishConns() != 1 {
			t.Errorf("PublishConns %d: New dialled %d times, %d connections", conns, dials, n.PublishConns())
		}
		n.Close()
	}
	n, h, _, _, extra := connsNode(t, 3)
	if got := len(extra()); got != 2 || n.PublishConns() != 3 || h.ReadyErr() != nil {
		t.Errorf("after Run: %d dialled, %d connections, ready %v; want 2, 3, ready", got, n.PublishConns(), h.ReadyErr())
	}
}

// Ready is closed once Run has opened the publishing connections it starts with and turned the
// node ready, and never when Run fails before: whatever waits on it starts no call on the node's
// own connection.
func TestReadyAfterPublishConns(t *testing.T) {
	n, _, srv, _, _ := connsNode(t, 3)
	select {
	case <-n.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("Ready not closed on a ready node")
	}
	if got := n.PublishConns(); got != 3 {
		t.Errorf("%d publishing connections once ready, want 3", got)
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	cfg := DefaultConfig()
	cfg.ID, cfg.PublishConns = "in-2", 2
	failed, err := New(cfg, Deps{NC: nc, Log: zerolog.Nop(), Dial: func(int) (*nats.Conn, error) { return nil, errors.New("refused") }})
	if err != nil {
		t.Fatal(err)
	}
	defer failed.Close()
	if err := failed.Run(t.Context()); err == nil {
		t.Fatal("Run with a failing dial returned nil")
	}
	select {
	case <-failed.Ready():
		t.Error("Ready closed although Run failed before it served")
	default:
	}
}

// A call takes the first connection with fewer than CallsPerPublishConn calls; once every one
// has as many, the least-loaded one; an ended call's place is taken next. The node's own
// connection takes none while it has others; alone, it takes every call.
func TestCallsFillPublishConnsInTurn(t *testing.T) {
	own := &pubConn{}
	n := &Node{own: own, pubs: []*pubConn{own}, fill: CallsPerPublishConn}
	load := func() string {
		var out []int
		for _, p := range n.pubs {
			out = append(out, p.calls)
		}
		return fmt.Sprint(out)
	}
	var cs []*Call
	start := func(k int) {
		for range k {
			c := &Call{}
			n.assignConn(c)
			cs = append(cs, c)
		}
	}
	start(CallsPerPublishConn + 1)
	if got, want := load(), fmt.Sprintf("[%d]", CallsPerPublishConn+1); got != want {
		t.Fatalf("calls on the node's own connection alone %s, want %s", got, want)
	}
	own.calls = 0
	n.pubs = append(n.pubs, &pubConn{}, &pubConn{}, &pubConn{})
	start(CallsPerPublishConn)
	if got, want := load(), fmt.Sprintf("[0 %d 0 0]", CallsPerPublishConn); got != want {
		t.Fatalf("calls per connection %s, want %s: a node of few calls publishes on one, not its own", got, want)
	}
	start(2 * CallsPerPublishConn)
	start(3)
	f := CallsPerPublishConn + 1
	if got, want := load(), fmt.Sprintf("[0 %d %d %d]", f, f, f); got != want {
		t.Fatalf("calls per connection %s, want %s: the node's own takes none", got, want)
	}
	if cs[len(cs)-1].pub == cs[len(cs)-2].pub || cs[len(cs)-2].pub == cs[len(cs)-3].pub {
		t.Fatal("past the fill, calls in a row share a connection")
	}
	freed := cs[len(cs)-2].pub
	freed.calls-- // as Node.remove does
	start(1)
	if cs[len(cs)-1].pub != freed {
		t.Fatal("a new call did not take the least-loaded connection")
	}
	n.pubs[1].calls = CallsPerPublishConn - 1
	start(1)
	if cs[len(cs)-1].pub != n.pubs[1] {
		t.Fatal("a new call did not take the first connection below the fill")
	}
}

// The automatic setting (0) opens one extra connection when Run starts, when the node can dial
// them, and publishes on its own only when it cannot; a node of a few calls logs in twice and
// publishes on the extra one.
func TestAutoPublishConns(t *testing.T) {
	n, _, srv, _, extra := connsNode(t, 0)
	if got := n.PublishConns(); got != 2 || len(extra()) != 1 {
		t.Fatalf("%d publishing connections, %d dialled; want 2, 1", got, len(extra()))
	}
	if got := srv.NumClients(); got != 3 { // and the test's client
		t.Fatalf("server has %d clients, want 3", got)
	}
	n.mu.Lock()
	n.fill = CallsPerPublishConn
	n.mu.Unlock()
	for i := range 3 {
		c, err := n.StartCall(context.Background(), twoLegSpec(fmt.Sprintf("c%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		if c.pub != n.conns()[1] {
			t.Fatalf("call %d of 3 publishes on connection %d, want 2", i, slices.Index(n.conns(), c.pub)+1)
		}
	}
	if got := n.PublishConns(); got != 2 {
		t.Errorf("3 calls: %d connections, want 2", got)
	}
	cfg := DefaultConfig()
	cfg.ID = "in-2"
	alone, err := New(cfg, Deps{Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer alone.Close()
	if got := alone.PublishConns(); got != 1 {
		t.Errorf("a node that cannot dial publishes on %d connections, want 1", got)
	}
}

// awaitConns waits until n publishes on want connections.
func awaitConns(t *testing.T, n *Node, want int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); n.PublishConns() != want; {
		if time.Now().After(deadline) {
			t.Fatalf("%d publishing connections, want %d", n.PublishConns(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The automatic setting opens the next connection when the extra ones have room for fewer than
// half a connection's calls, before a call needs it, up to maxConns; past that, calls take the
// least-loaded one. A connection opened later has its metrics and counts for readiness.
func TestAutoPublishConnsGrow(t *testing.T) {
	reg := obs.NewRegistry()
	n, h, srv, _, extra := connsNodeWith(t, 0, reg, nil, time.Hour)
	n.mu.Lock()
	n.fill, n.maxConns = 4, 4
	n.mu.Unlock()
	startCalls(t, n, "c1")
	if got := n.PublishConns(); got != 2 {
		t.Fatalf("1 call of 4 on the extra connection: %d connections, want 2", got)
	}
	calls := startCalls(t, n, "c2") // half of the fill: the next one opens now
	awaitConns(t, n, 3)
	calls = append(calls, startCalls(t, n, "c3", "c4", "c5")...)
	if pubs := n.conns(); calls[2].pub != pubs[1] || calls[3].pub != pubs[2] {
		t.Fatal("calls did not fill the first extra connection before the next")
	}
	startCalls(t, n, "c6") // connection 3 half full
	awaitConns(t, n, 4)
	startCalls(t, n, "c7", "c8", "c9", "c10", "c11", "c12", "c13")
	n.mu.Lock()
	growing, load := n.growing, []int{}
	for _, p := range n.pubs {
		load = append(load, p.calls)
	}
	n.mu.Unlock()
	if growing || n.PublishConns() != 4 || len(extra()) != 3 || fmt.Sprint(load) != "[0 5 4 4]" {
		t.Fatalf("at maxConns: dialling %v, %d connections, %d dialled, calls %v; want no dial, 4, 3, [0 5 4 4]", growing, n.PublishConns(), len(extra()), load)
	}
	// The connection opened last has its series, and the node is not ready while it is down.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		if mf.GetName() != "callrouter_ingest_publish_conn_calls" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == "4" && m.GetGauge().GetValue() == 4 {
				found = true
			}
		}
	}
	if !found {
		t.Error(`callrouter_ingest_publish_conn_calls{conn="4"} is not 4`)
	}
	if err := h.ReadyErr(); err != nil {
		t.Fatalf("not ready before the cut: %v", err)
	}
	cutConns(t, srv, extra()[2:])
	for deadline := time.Now().Add(10 * time.Second); h.ReadyErr() == nil || !strings.Contains(h.ReadyErr().Error(), "publish connection 4"); {
		if time.Now().After(deadline) {
			t.Fatalf("ready error %v with connection 4 cut", h.ReadyErr())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A call start never waits on a dial: while the next connection is being dialled, calls past
// the fill take the least-loaded connection, and the ones after the dial take the new one.
func TestCallStartNeverWaitsOnDial(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	gate := func(i int) {
		if i == 2 {
			<-release
		}
	}
	n, _, _, _, _ := connsNodeGated(t, 0, obs.NewRegistry(), nil, time.Hour, gate)
	t.Cleanup(func() { once.Do(func() { close(release) }) }) // before the node's cleanup
	n.mu.Lock()
	n.fill, n.maxConns = 2, 3
	n.mu.Unlock()
	calls := startCalls(t, n, "c1", "c2", "c3", "c4") // the dial of connection 3 starts at c1 and hangs
	for _, c := range calls {
		if c.pub != n.conns()[1] {
			t.Fatal("a call started while a dial hangs is not on the one extra connection")
		}
	}
	if got := n.PublishConns(); got != 2 {
		t.Fatalf("%d connections while the dial hangs, want 2", got)
	}
	once.Do(func() { close(release) })
	awaitConns(t, n, 3)
	if c := startCalls(t, n, "c5")[0]; c.pub != n.conns()[2] {
		t.Error("a call after the dial did not take the new connection")
	}
}

// Every call's "end" event reaches a subscriber after all of its frames, its last ones
// included, although the frames go on other connections than the node's own.
func TestEndEventNeverOvertakesFrames(t *testing.T) {
	n, _, _, _, _ := connsNode(t, 4)
	const calls, frames = 24, 60
	w, err := nats.Connect(n.nc.ConnectedUrl())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ch := make(chan *nats.Msg, calls*(2*frames+8))
	for _, subj := range []string{"audio.acme.>", "events.acme.>"} {
		if _, err := w.ChanSubscribe(subj, ch); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	cs := make([]*Call, calls)
	for i := range cs {
		if cs[i], err = n.StartCall(context.Background(), twoLegSpec(fmt.Sprintf("c%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	payload := make([]byte, 160)
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range frames {
				for leg := range 2 {
					_ = c.Send(leg, payload, 0)
				}
			}
			c.End("hangup")
		}()
	}
	wg.Wait()
	seen := map[string]int{}
	ended := 0
	deadline := time.After(20 * time.Second)
	for ended < calls {
		select {
		case m := <-ch:
			tok := strings.Split(m.Subject, ".")
			switch tok[0] {
			case "audio":
				seen[tok[2]]++
			case "events":
				if tok[3] != "end" {
					continue
				}
				ended++
				if got := seen[tok[2]]; got != 2*(frames+1) {
					t.Errorf("call %s: end event after %d of its %d frames", tok[2], got, 2*(frames+1))
				}
			}
		case <-deadline:
			t.Fatalf("%d of %d end events in time", ended, calls)
		}
	}
}

// A publishing connection that is down makes the node unready; Close closes the connections
// the node opened.
func TestPublishConnDownMakesNodeUnready(t *testing.T) {
	n, h, srv, _, extra := connsNode(t, 2)
	if err := n.extraConnected(); err != nil {
		t.Fatalf("connected before the cut: %v", err)
	}
	nc := extra()[0]
	id, err := nc.GetClientID()
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.DisconnectClientByID(id); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for h.ReadyErr() == nil {
		if time.Now().After(deadline) {
			t.Fatal("node still ready with its publishing connection cut")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := h.ReadyErr(); !strings.Contains(err.Error(), "publish connection 2") {
		t.Errorf("ready error %q does not name the connection", err)
	}
	n.Close()
	if !nc.IsClosed() {
		t.Error("Close left an extra connection open")
	}
}

// A replay answer goes out on the node's own connection (the one the request came in on) and
// the call's frames on another: every frame an answer holds has reached the asker live before
// the answer does.
func TestReplayAnswerNeverOvertakesFrames(t *testing.T) {
	n, _, _, _, _ := connsNode(t, 2)
	c, err := n.StartCall(context.Background(), twoLegSpec("c1"))
	if err != nil {
		t.Fatal(err)
	}
	if c.pub == n.own {
		t.Fatal("the call publishes on the node's own connection")
	}
	w, err := nats.Connect(n.nc.ConnectedUrl())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	const frames = 200 // within the ring (250 frames)
	live := make(chan *nats.Msg, frames+8)
	if _, err := w.ChanSubscribe(subjects.Audio("acme", "c1", "caller"), live); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		payload := make([]byte, 160)
		for range frames {
			_ = c.Send(0, payload, 0)
		}
	}()
	seen, answers := 0, 0
	req, _ := json.Marshal(wire.ReplayRequest{V: wire.V, Tenant: "acme", Call: "c1", Epoch: c.Epoch(), Worker: "w1",
		Legs: []wire.LegRange{{Leg: 0, From: session.FromRingStart}}})
	for done := false; !done; {
		select {
		case <-sent:
			done = true
		default:
		}
		m, err := w.Request(subjects.IngestVerb("in-1", subjects.IngestVerbReplay), req, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		const size = frame.HeaderLen + 160 // a μ-law frame
		if len(m.Data)%size != 0 {
			t.Fatalf("answer %d: %d bytes (%q), not whole frames", answers, len(m.Data), m.Data)
		}
		got := len(m.Data) / size
		for len(live) > 0 { // what the connection's reader delivered before the answer
			<-live
			seen++
		}
		if got > seen {
			t.Fatalf("answer %d holds %d frames, %d of them seen live before it", answers, got, seen)
		}
		answers++
	}
}

// An event a transport publishes for a call (Call.PublishEvent: SIP's DTMF, WHIP's media
// report) reaches a subscriber after every frame the call sent before it, although the frames
// go on other connections than the node's own.
func TestTransportEventNeverOvertakesFrames(t *testing.T) {
	n, _, _, _, _ := connsNode(t, 4)
	const calls, frames = 24, 60
	w, err := nats.Connect(n.nc.ConnectedUrl())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ch := make(chan *nats.Msg, calls*(2*frames+8))
	for _, subj := range []string{"audio.acme.>", "events.acme.*.dtmf"} {
		if _, err := w.ChanSubscribe(subj, ch); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	cs := make([]*Call, calls)
	for i := range cs {
		if cs[i], err = n.StartCall(context.Background(), twoLegSpec(fmt.Sprintf("c%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	payload := make([]byte, 160)
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range frames {
				for leg := range 2 {
					_ = c.Send(leg, payload, 0)
				}
			}
			if err := c.PublishEvent(wire.Event{Kind: "dtmf", Epoch: c.Epoch(), Source: "test"}, map[string]string{"digit": "5"}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	seen := map[string]int{}
	events := 0
	deadline := time.After(20 * time.Second)
	for events < calls {
		select {
		case m := <-ch:
			tok := strings.Split(m.Subject, ".")
			if tok[0] == "audio" {
				seen[tok[2]]++
				continue
			}
			events++
			var ev wire.Event
			if err := json.Unmarshal(m.Data, &ev); err != nil || ev.Tenant != "acme" || ev.Call != tok[2] {
				t.Errorf("event %s: %+v, %v: not the call's", m.Subject, ev, err)
			}
			if got := seen[tok[2]]; got != 2*frames {
				t.Errorf("call %s: event after %d of the %d frames sent before it", tok[2], got, 2*frames)
			}
		case <-deadline:
			t.Fatalf("%d of %d events in time", events, calls)
		}
	}
}

// Every publishing connection has its series on /metrics, labelled by its index: up or down,
// its calls, and what was published on it.
func TestPublishConnsHaveMetrics(t *testing.T) {
	reg := obs.NewRegistry()
	n, h, srv, _, extra := connsNodeWith(t, 3, reg, nil, time.Hour)
	web := httptest.NewServer(obs.NewMux(h, reg))
	defer web.Close()
	scrape := func() map[string]string {
		t.Helper()
		resp, err := http.Get(web.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, line := range strings.Split(string(body), "\n") {
			if k, v, ok := strings.Cut(line, " "); ok && strings.HasPrefix(k, "callrouter_ingest_publish_conn_") {
				out[k] = v
			}
		}
		return out
	}
	payload := make([]byte, 160)
	const frames = 10
	for i := range 3 {
		c, err := n.StartCall(context.Background(), twoLegSpec(fmt.Sprintf("c%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		for range frames {
			for leg := range 2 {
				if err := c.Send(leg, payload, 0); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	got := scrape()
	// The node's own connection carries no call (connsNode fills a connection with one); of the
	// three calls the second extra one has one, the first two.
	for conn, calls := range []string{"0", "2", "1"} {
		l := fmt.Sprintf(`{conn="%d"}`, conn+1)
		for name, want := range map[string]string{"connected": "1", "calls": calls, "reconnects_total": "0"} {
			if v := got["callrouter_ingest_publish_conn_"+name+l]; v != want {
				t.Errorf("%s%s = %q, want %s", name, l, v, want)
			}
		}
	}
	// An extra connection carries its calls' frames and "start" events, nothing else.
	for conn, calls := range map[string]int{"2": 2, "3": 1} {
		if v := got[`callrouter_ingest_publish_conn_messages_total{conn="`+conn+`"}`]; v != fmt.Sprint(calls*(2*frames+1)) {
			t.Errorf("messages on connection %s: %q, want %d", conn, v, calls*(2*frames+1))
		}
		if v := got[`callrouter_ingest_publish_conn_bytes_total{conn="`+conn+`"}`]; v == "" || v == "0" {
			t.Errorf("bytes on connection %s: %q", conn, v)
		}
	}
	id, err := extra()[0].GetClientID()
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.DisconnectClientByID(id); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for scrape()[`callrouter_ingest_publish_conn_connected{conn="2"}`] != "0" {
		if time.Now().After(deadline) {
			t.Fatal(`connected{conn="2"} still 1 with the connection cut`)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if v := scrape()[`callrouter_ingest_publish_conn_connected{conn="3"}`]; v != "1" {
		t.Errorf(`connected{conn="3"} = %q with connection 2 cut`, v)
	}
}

// An extra publishing connection back from an absence longer than StrandedAfter, the node's own
// connection and the other extra one up all along, re-places the calls whose frames go on it,
// and only those.
func TestPublishConnBackReplacesItsCallsOnly(t *testing.T) {
	tune := func(c *Config) { c.HeartbeatInterval, c.StrandedAfter = 50*time.Millisecond, 300*time.Millisecond }
	n, _, srv, client, extra := connsNodeWith(t, 3, obs.NewRegistry(), tune, 1500*time.Millisecond)
	calls := startCalls(t, n, "kept", "cut")
	if pubs := n.conns(); calls[0].pub != pubs[1] || calls[1].pub != pubs[2] {
		t.Fatal("the calls do not publish on one extra connection each")
	}
	reqs := watchPlaceRequests(t, client)
	cutConns(t, srv, extra()[1:])
	// The connection comes back after 1.5 s, past StrandedAfter: the call on it is re-placed.
	expectOnlyReplaced(t, reqs, "cut")
	// Ten more heartbeats: still no re-placement of the call on the connection that stayed up.
	awaitHeartbeats(t, watchHeartbeats(t, client), 10)
	select {
	case req := <-reqs:
		if req.Call.Call == "kept" {
			t.Fatalf("call kept re-placed (%s): its connection was up all along", req.Reason)
		}
	default:
	}
	if calls[1].Epoch() < 2 || calls[0].Epoch() != 1 {
		t.Errorf("epochs: cut %d, kept %d; want cut re-placed, kept at 1", calls[1].Epoch(), calls[0].Epoch())
	}
}

// startCalls starts a two-leg call of each name on n.
func startCalls(t *testing.T, n *Node, names ...string) []*Call {
	t.Helper()
	calls := make([]*Call, 0, len(names))
	for _, name := range names {
		c, err := n.StartCall(context.Background(), twoLegSpec(name))
		if err != nil {
			t.Fatal(err)
		}
		calls = append(calls, c)
	}
	return calls
}

// watchPlaceRequests returns the place requests client sees from now on, beside the stand-in
// router of connsNodeWith.
func watchPlaceRequests(t *testing.T, client *nats.Conn) <-chan wire.PlaceRequest {
	t.Helper()
	reqs := make(chan wire.PlaceRequest, 16)
	if _, err := client.Subscribe(subjects.Place, func(m *nats.Msg) {
		var req wire.PlaceRequest
		if json.Unmarshal(m.Data, &req) == nil {
			reqs <- req
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := client.Flush(); err != nil {
		t.Fatal(err)
	}
	return reqs
}

// watchHeartbeats returns a channel that holds at most one unread heartbeat of node in-1.
func watchHeartbeats(t *testing.T, client *nats.Conn) <-chan struct{} {
	t.Helper()
	beats := make(chan struct{}, 1)
	sub, err := client.Subscribe(subjects.Heartbeat(subjects.Ingest, "in-1"), func(*nats.Msg) {
		select {
		case beats <- struct{}{}:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return beats
}

// awaitHeartbeats waits for n more heartbeats.
func awaitHeartbeats(t *testing.T, beats <-chan struct{}, n int) {
	t.Helper()
	for range n {
		select {
		case <-beats:
		case <-time.After(10 * time.Second):
			t.Fatal("no heartbeat")
		}
	}
}

// cutConns disconnects each of conns at the server.
func cutConns(t *testing.T, srv *server.Server, conns []*nats.Conn) {
	t.Helper()
	for _, nc := range conns {
		id, err := nc.GetClientID()
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.DisconnectClientByID(id); err != nil {
			t.Fatal(err)
		}
	}
}

// expectOnlyReplaced waits for call's re-placement with reason ingest_stall, failing on any
// other call's.
func expectOnlyReplaced(t *testing.T, reqs <-chan wire.PlaceRequest, call string) {
	t.Helper()
	select {
	case req := <-reqs:
		if req.Call.Call != call || req.Reason != wire.ReasonIngestStall {
			t.Fatalf("re-placement of %s (%s), want only call %s's with reason %s", req.Call.Call, req.Reason, call, wire.ReasonIngestStall)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("call %s, on a connection that came back, was not re-placed", call)
	}
}

// ConnsInUse counts the connections that carry frames, filled in turn (assignConn): the extra
// ones, never the node's own unless it is the only one. The load tester's raw phases publish on
// as many.
func TestConnsInUse(t *testing.T) {
	for _, tc := range []struct{ conns, calls, want int }{
		{0, 0, 1}, {0, 1, 1}, {0, CallsPerPublishConn, 1}, {0, CallsPerPublishConn + 1, 2},
		{0, 2500, 13}, {0, 100000, MaxPublishConns - 1}, {1, 2500, 1}, {2, 2500, 1}, {3, 6, 1},
		{10, 1000, 5}, {10, 2500, 9}, {11, 2500, 10},
	} {
		if got := ConnsInUse(tc.conns, tc.calls); got != tc.want {
			t.Errorf("ConnsInUse(%d, %d) = %d, want %d", tc.conns, tc.calls, got, tc.want)
		}
	}
}

// ConnsInUse says how many connections carry frames on a real node of that many calls, which
// is what the load tester gives its raw phases.
func TestConnsInUseMatchesTheNode(t *testing.T) {
	const calls = 2*CallsPerPublishConn + 1
	for _, conns := range []int{0, 1, 3} {
		n, _, _, _, _ := connsNode(t, conns)
		n.mu.Lock()
		n.fill = CallsPerPublishConn
		n.mu.Unlock()
		for i := range calls {
			startCalls(t, n, fmt.Sprintf("n%d-c%d", conns, i))
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) { // the rule, not the dial's speed
				n.mu.Lock()
				growing := n.growing
				n.mu.Unlock()
				if !growing {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("a dial did not end")
				}
			}
		}
		carry := 0
		n.mu.Lock()
		for _, p := range n.pubs {
			if p.calls > 0 {
				carry++
			}
		}
		n.mu.Unlock()
		if want := ConnsInUse(conns, calls); carry != want {
			t.Errorf("PublishConns %d, %d calls: %d connections carry frames, ConnsInUse says %d", conns, calls, carry, want)
		}
		for _, c := range n.Calls() {
			c.End("test over")
		}
	}
}

// A call placed again while its connection was away (a router's reconcile, once the node's own
// connection was back) is not re-placed once more when that connection comes back: it already
// has a worker that took it after the absence. The call on the other connection that came back,
// not placed since, is.
func TestAbsenceSkipsCallsPlacedSince(t *testing.T) {
	tune := func(c *Config) { c.HeartbeatInterval, c.StrandedAfter = 50*time.Millisecond, 300*time.Millisecond }
	n, _, srv, client, extra := connsNodeWith(t, 3, obs.NewRegistry(), tune, 1500*time.Millisecond)
	calls := startCalls(t, n, "moved", "stale")
	moved := calls[0]
	if pubs := n.conns(); moved.pub != pubs[1] || calls[1].pub != pubs[2] {
		t.Fatal("the calls do not publish on one connection each")
	}
	reqs := watchPlaceRequests(t, client)
	beats := watchHeartbeats(t, client)
	cutConns(t, srv, extra())
	// While both are away (two heartbeats on, so the node has seen them away), call moved is
	// placed again, as a router's reconcile would.
	for deadline := time.Now().Add(5 * time.Second); !extra()[0].IsReconnecting() || !extra()[1].IsReconnecting(); {
		if time.Now().After(deadline) {
			t.Fatal("the extra connections did not drop")
		}
		time.Sleep(5 * time.Millisecond)
	}
	select { // one sent before the node could have seen them away
	case <-beats:
	default:
	}
	awaitHeartbeats(t, beats, 2)
	if !moved.setPlacement(moved.nextEpoch(), moved.Placements()) {
		t.Fatal("call moved not placed again")
	}
	epoch := moved.Epoch()
	expectOnlyReplaced(t, reqs, "stale")
	// Ten more heartbeats: call moved stays at the epoch it was placed at during the absence.
	awaitHeartbeats(t, beats, 10)
	select {
	case req := <-reqs:
		if req.Call.Call != "stale" {
			t.Fatalf("call %s re-placed (%s) after its connection came back", req.Call.Call, req.Reason)
		}
	default:
	}
	if got := moved.Epoch(); got != epoch {
		t.Errorf("call moved at epoch %d, want %d: placed again during the absence, it was re-placed once more", got, epoch)
	}
}
