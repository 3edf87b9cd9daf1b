package stack

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/natsauth"
	"github.com/callrouter/callrouter/internal/player"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// attackSpec is the identities file of the attack tests: per-node identities where the attacks
// come from inside a role (a worker forging another's heartbeat), a pool dedicated to acme.
const attackSpec = `
tenant acme audio
tenant globex
pool default shared
pool pci acme
ingest ingest-1
router router-1
worker default worker-1 worker-2
worker pci
admin ops
`

// attacker is a connection with one identity's key that records the permission violations the
// server reports to it.
type attacker struct {
	nc   *nats.Conn
	mu   sync.Mutex
	errs []string
}

func connectAttacker(t *testing.T, s *Stack, set *natsauth.Set, name string) *attacker {
	t.Helper()
	a := &attacker{}
	opts := []nats.Option{nats.Name("attacker " + name), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		a.mu.Lock()
		a.errs = append(a.errs, err.Error())
		a.mu.Unlock()
	})}
	if set != nil {
		kp, err := nkeys.FromSeed(set.Keys[name])
		if err != nil {
			t.Fatal(err)
		}
		pub, _ := kp.PublicKey()
		opts = append(opts, nats.Nkey(pub, kp.Sign), nats.CustomInboxPrefix(bus.InboxPrefix(pub)))
	}
	var err error
	if a.nc, err = nats.Connect(s.URL, opts...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.nc.Close)
	return a
}

// refused waits for the server's permissions violation for a publish or a subscription
// ("publish", "subscription") on subject.
func (a *attacker) refused(t *testing.T, what, subject string) {
	t.Helper()
	_ = a.nc.Flush()
	want := strings.ToLower("permissions violation for " + what + " to \"" + subject + "\"")
	eventually(t, 5*time.Second, "a permissions violation for "+what+" to "+subject, func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		for _, e := range a.errs {
			if strings.Contains(strings.ToLower(e), want) {
				return true
			}
		}
		return false
	})
}

func (a *attacker) publish(t *testing.T, subject string, v any) {
	t.Helper()
	data, ok := v.([]byte)
	if !ok {
		var err error
		if data, err = json.Marshal(v); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.nc.Publish(subject, data); err != nil {
		t.Fatal(err)
	}
	a.refused(t, "publish", subject)
}

// request sends a request with its own inbox as the reply subject and waits for the refusal.
func (a *attacker) request(t *testing.T, subject string, v any) {
	t.Helper()
	data, _ := json.Marshal(v)
	if err := a.nc.PublishRequest(subject, a.nc.NewRespInbox(), data); err != nil {
		t.Fatal(err)
	}
	a.refused(t, "publish", subject)
}

// subscribe subscribes and waits for the refusal; anything that arrives meanwhile is a leak.
func (a *attacker) subscribe(t *testing.T, subject string) {
	t.Helper()
	var leaked sync.Once
	sub, err := a.nc.Subscribe(subject, func(m *nats.Msg) {
		leaked.Do(func() { t.Errorf("read %s through %s", m.Subject, subject) })
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	a.refused(t, "subscription", subject)
}

// TestAttacksFailWithPermissions plays a call and, while it runs, makes every attack of issue 14
// with the credential of a role that is not allowed to: each is refused by the server (or by a
// handler, and counted), and the call keeps every frame; a call placed after the forged
// heartbeats is placed and complete too.
func TestAttacksFailWithPermissions(t *testing.T) {
	recorded.reset()
	spec, err := natsauth.Parse(strings.NewReader(attackSpec))
	if err != nil {
		t.Fatal(err)
	}
	set, err := natsauth.NewSet(spec)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Start(Config{Workers: 2, Worker: testWorkerConfig(), Log: testLogger(t), Auth: set})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	eventually(t, 10*time.Second, "2 workers visible to the router", func() bool { return len(s.Routers[0].Workers()) == 2 })

	const frames = 500 // 10 s: every attack (the last one asks about this call) runs while it plays, even on a loaded machine
	rec := tone(t, frames)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	played := make(chan error, 1)
	go func() {
		_, err := player.Play(ctx, s.Ingest, rec, rec.Spec("acme", "attack-0", nil), frames, 1)
		played <- err
	}()
	id := session.ID{Tenant: "acme", Call: "attack-0"}
	eventually(t, 10*time.Second, "the call to be placed", func() bool {
		c := s.Ingest.Call(id)
		return c != nil && len(c.Placements()) == 1
	})
	call := s.Ingest.Call(id)
	holder, epoch := call.Placements()[0].Worker, call.Epoch()
	other := "worker-1"
	if holder == other {
		other = "worker-2"
	}
	as := func(name string) *attacker { return connectAttacker(t, s, set, name) }

	t.Run("read every tenant's audio", func(t *testing.T) {
		as("tenant-globex").subscribe(t, "audio.>")
		as("tenant-globex").subscribe(t, "audio.acme.>")
		as("admin-ops").subscribe(t, "audio.>")
	})
	t.Run("read another tenant's DTMF events", func(t *testing.T) {
		as("tenant-globex").subscribe(t, "events.>")
		as("tenant-globex").subscribe(t, "events.acme.attack-0.dtmf")
	})
	t.Run("a dedicated pool's worker reads another tenant's audio", func(t *testing.T) {
		as("worker-pci").subscribe(t, "audio.globex.>")
		as("worker-pci").subscribe(t, "audio.>")
	})
	t.Run("inject a frame with a higher epoch", func(t *testing.T) {
		h := frame.Header{Codec: frame.CodecL16, SampleRate: 8000, Epoch: epoch + 5, Seq: 1 << 20, Capture: time.Now().UnixNano(), DurationUS: 20000}
		buf := make([]byte, h.MarshalSize())
		if _, err := h.MarshalTo(buf); err != nil {
			t.Fatal(err)
		}
		for _, who := range []string{"tenant-acme", "worker-default-" + other, "router-router-1"} {
			as(who).publish(t, "audio.acme.attack-0.caller", buf)
		}
	})
	t.Run("forge idle worker heartbeats", func(t *testing.T) {
		for _, who := range []string{"worker-default-" + other, "tenant-acme", "ingest-ingest-1"} {
			a := as(who)
			for _, fake := range []string{"fake-1", "fake-2", "fake-3"} {
				a.publish(t, "hb.worker."+fake, wire.WorkerHeartbeat{V: wire.V, ID: fake, Pool: "default", Mode: "session", Capacity: 1000, Ready: true, IntervalMS: 500})
			}
		}
		if n := len(s.Routers[0].Workers()); n != 2 {
			t.Fatalf("router sees %d workers, want 2", n)
		}
	})
	t.Run("forge an ingest heartbeat with an empty call list", func(t *testing.T) {
		for _, who := range []string{"worker-default-" + holder, "tenant-acme", "router-router-1"} {
			as(who).publish(t, "hb.ingest.ingest-1", wire.IngestHeartbeat{V: wire.V, ID: "ingest-1", IntervalMS: 500, Calls: []wire.IngestCall{}})
		}
	})
	t.Run("forge a worker's call list", func(t *testing.T) {
		// A full snapshot without the call, and a delta that says it left, in the holder's name;
		// and a ghost worker's list claiming it. Seq far ahead, so a router that took them
		// would take them as the next message.
		empty := wire.WorkerState{V: wire.VHeartbeat, ID: holder, Seq: 1 << 40, Full: true, Calls: []wire.WorkerCall{}}
		gone := wire.WorkerState{V: wire.VHeartbeat, ID: holder, Seq: 1<<40 + 1, Calls: []wire.WorkerCall{}, Gone: []session.ID{id}}
		ghost := wire.WorkerState{V: wire.VHeartbeat, ID: "fake-1", Seq: 1, Full: true,
			Calls: []wire.WorkerCall{{Tenant: "acme", Call: "attack-0", Epoch: epoch + 1, Ingest: "ingest-1"}}}
		for _, who := range []string{"worker-default-" + other, "tenant-acme", "ingest-ingest-1", "router-router-1"} {
			a := as(who)
			a.publish(t, subjects.HeartbeatCalls(subjects.Worker, holder), empty)
			a.publish(t, subjects.HeartbeatCalls(subjects.Worker, holder), gone)
			a.publish(t, subjects.HeartbeatCalls(subjects.Worker, "fake-1"), ghost)
		}
	})
	t.Run("forge the ingest's call list", func(t *testing.T) {
		empty := wire.IngestState{V: wire.VHeartbeat, ID: "ingest-1", Seq: 1 << 40, Full: true, Calls: []wire.IngestCall{}}
		gone := wire.IngestState{V: wire.VHeartbeat, ID: "ingest-1", Seq: 1<<40 + 1, Calls: []wire.IngestCall{}, Gone: []session.ID{id}}
		for _, who := range []string{"worker-default-" + holder, "tenant-acme", "router-router-1", "admin-ops"} {
			a := as(who)
			a.publish(t, subjects.HeartbeatCalls(subjects.Ingest, "ingest-1"), empty)
			a.publish(t, subjects.HeartbeatCalls(subjects.Ingest, "ingest-1"), gone)
		}
	})
	t.Run("forge bcast.down", func(t *testing.T) {
		for _, who := range []string{"worker-default-" + other, "ingest-ingest-1", "tenant-acme", "admin-ops"} {
			as(who).publish(t, "bcast.down", wire.Down{V: wire.V, Component: "worker", ID: holder, Reason: "forged", By: "router-1"})
		}
	})
	t.Run("forge an offer", func(t *testing.T) {
		offer := wire.Offer{V: wire.V, Call: rec.Spec("acme", "attack-0", nil), Ingest: "ingest-1", Epoch: epoch + 1, Pool: "default", Router: "router-1"}
		for _, who := range []string{"ingest-ingest-1", "worker-default-" + other, "tenant-acme"} {
			as(who).request(t, "worker."+holder+".offer", offer)
		}
	})
	t.Run("forge a release", func(t *testing.T) {
		rel := wire.Release{V: wire.V, Tenant: "acme", Call: "attack-0", Reason: "forged"}
		for _, who := range []string{"tenant-acme", "worker-default-" + other, "admin-ops"} {
			as(who).publish(t, "worker."+holder+".release", rel)
		}
	})
	t.Run("forge a placement request", func(t *testing.T) {
		req := wire.PlaceRequest{V: wire.V, Call: rec.Spec("acme", "attack-0", nil), Ingest: "ingest-1", Epoch: epoch + 1, Pools: []string{"default"}}
		for _, who := range []string{"tenant-acme", "worker-default-" + other} {
			as(who).request(t, "router.place", req)
		}
	})
	t.Run("read a call through ingest replay", func(t *testing.T) {
		req := wire.ReplayRequest{V: wire.V, Tenant: "acme", Call: "attack-0", Epoch: epoch, Worker: holder, Legs: []wire.LegRange{{Leg: 0, From: -2}}}
		for _, who := range []string{"tenant-acme", "admin-ops", "router-router-1"} {
			as(who).request(t, "ingest.ingest-1.replay", req)
		}
		// A worker may ask for replays, but ingest answers only the one the call is placed on.
		nc := as("worker-default-" + other).nc
		req.Worker = other
		data, _ := json.Marshal(req)
		m, err := nc.Request("ingest.ingest-1.replay", data, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var r wire.Reply
		if json.Unmarshal(m.Data, &r) != nil || r.OK || r.Code != wire.CodeBadRequest {
			t.Fatalf("replay to a worker that does not hold the call: %d bytes, reply %+v; want a bad_request refusal", len(m.Data), r)
		}
	})
	t.Run("the admin API answers a tenant about its own calls only", func(t *testing.T) {
		globex := as("tenant-globex")
		globex.request(t, "router.api.calls", nil)
		globex.request(t, "router.api.acme.calls", nil)
		ask := func(nc *nats.Conn, subject string, req, resp any) {
			t.Helper()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := bus.Request(ctx, nc, subject, req, resp); err != nil {
				t.Fatal(err)
			}
		}
		var calls wire.CallsReply
		ask(globex.nc, "router.api.globex.calls", nil, &calls)
		if !calls.OK || len(calls.Calls) != 0 {
			t.Fatalf("globex's calls: %+v; want none", calls)
		}
		var one wire.CallReply
		ask(globex.nc, "router.api.globex.call", wire.CallQuery{V: wire.V, Tenant: "acme", Call: "attack-0"}, &one)
		if one.OK || one.Call != nil {
			t.Fatalf("globex asked about acme's call and got %+v", one)
		}
		var workers wire.Reply
		ask(globex.nc, "router.api.globex.workers", nil, &workers)
		if workers.OK {
			t.Fatal("a tenant listed the workers")
		}
		ask(as("tenant-acme").nc, "router.api.acme.calls", nil, &calls)
		if !calls.OK || len(calls.Calls) != 1 || calls.Calls[0].Call != "attack-0" {
			t.Fatalf("acme's calls: %+v; want attack-0", calls)
		}
	})

	if err := <-played; err != nil {
		t.Fatalf("the call under attack: %v", err)
	}
	// Placement still works after the forged heartbeats, offers and downs.
	if _, err := player.Play(ctx, s.Ingest, rec, rec.Spec("acme", "attack-1", nil), 50, 4); err != nil {
		t.Fatalf("a call after the attacks: %v", err)
	}
	eventually(t, 10*time.Second, "every worker to release its calls", func() bool {
		return s.Workers[0].Calls() == 0 && s.Workers[1].Calls() == 0
	})
	checkComplete(t, "attack", 1, 2, frames)
	recorded.mu.Lock()
	got := len(recorded.seqs["acme/attack-1/0"])
	recorded.mu.Unlock()
	if got != 50 {
		t.Fatalf("the call after the attacks processed %d of 50 frames", got)
	}
}

// TestDedicatedPool runs a pool dedicated to acme with the permissions the generator gives it:
// acme's calls are placed on it and keep every frame; another tenant's call is refused by the
// routers (the pool's workers serve only acme) before any offer reaches them.
func TestDedicatedPool(t *testing.T) {
	recorded.reset()
	spec, err := natsauth.Parse(strings.NewReader("tenant acme\ntenant globex\npool default shared\npool pci acme\ningest\nrouter\nworker default\nworker pci\n"))
	if err != nil {
		t.Fatal(err)
	}
	set, err := natsauth.NewSet(spec)
	if err != nil {
		t.Fatal(err)
	}
	ic := ingest.DefaultConfig()
	ic.Pools = []string{"pci"}
	s, err := Start(Config{Workers: 1, Worker: testWorkerConfig(), Ingest: ic, Log: testLogger(t), Auth: set})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	wc := testWorkerConfig()
	wc.Pool, wc.Tenants = "pci", []string{"acme"}
	pci, err := s.AddWorker("pci-1", wc)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "2 workers visible to the router", func() bool { return len(s.Routers[0].Workers()) == 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rec := tone(t, 50)
	if _, err := player.Play(ctx, s.Ingest, rec, rec.Spec("acme", "pci-0", nil), 50, 4); err != nil {
		t.Fatalf("acme's call on its dedicated pool: %v", err)
	}
	if _, err := s.Ingest.StartCall(ctx, rec.Spec("globex", "pci-1", nil)); err == nil || !strings.Contains(err.Error(), "pci") {
		t.Fatalf("globex's call on acme's pool: %v; want a refusal naming the pool", err)
	}
	eventually(t, 10*time.Second, "the dedicated worker to release its call", func() bool { return pci.Calls() == 0 })
	checkComplete(t, "pci", 1, 2, 50)
}
