package stack

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// controlSubjects are the subjects a NATS client can send control messages on, each handled by a
// JSON (or hand-decoded) handler of a running component: routers' placement, admin API and
// heartbeat reader, the ingest's replay and re-placement verbs and down notices, the workers'
// offers, releases and per-call control.
var controlSubjects = []string{
	subjects.Place,
	subjects.API("calls"), subjects.API("call"), subjects.API("workers"), subjects.API("fuzz"),
	subjects.Heartbeat(subjects.Worker, "worker-1"), subjects.Heartbeat(subjects.Worker, "ghost"),
	subjects.Heartbeat(subjects.Ingest, "ingest-1"), subjects.Heartbeat(subjects.Ingest, "ghost"),
	subjects.Heartbeat(subjects.Router, "ghost"),
	subjects.Bcast(subjects.TopicDown), subjects.Bcast("ghost"),
	subjects.IngestVerb("ingest-1", subjects.IngestVerbReplay), subjects.IngestVerb("ingest-1", subjects.IngestVerbPlace),
	subjects.WorkerVerb("worker-1", subjects.WorkerVerbOffer), subjects.WorkerVerb("worker-1", subjects.WorkerVerbRelease),
	subjects.WorkerVerb("worker-1", wire.WorkerVerbDrain),
	subjects.Ctl("fuzz", "c1"),
	// The call lists (snapshots and deltas, wire.StateTracker): of the running worker and ingest,
	// of ghosts, and of a component kind that has none.
	subjects.HeartbeatCalls(subjects.Worker, "worker-1"), subjects.HeartbeatCalls(subjects.Ingest, "ingest-1"),
	subjects.HeartbeatCalls(subjects.Worker, "ghost"), subjects.HeartbeatCalls(subjects.Ingest, "ghost"),
	subjects.HeartbeatCalls(subjects.Router, "ghost"),
}

// callListSubject is the index in controlSubjects of the first call-list subject.
const callListSubject = 18

// panicsSeen sums callrouter_panics_total over every place a panic can be contained.
func panicsSeen(t testing.TB) float64 {
	reg := prometheus.NewRegistry()
	reg.MustRegister(guard.Panics)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, fam := range fams {
		for _, m := range fam.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// FuzzControlPlane sends what any NATS client could send to a running one-process stack (router,
// worker, ingest on an embedded server): any bytes, as a request, on any control subject. The
// handlers run behind guard.Handler, which would contain a panic; the fuzz fails on any contained
// panic, and on a router that no longer answers its admin API after the message.
func FuzzControlPlane(f *testing.F) {
	seed := func(i int, v any) {
		b, _ := json.Marshal(v)
		f.Add(uint8(i), b)
	}
	spec := session.Spec{ID: session.ID{Tenant: "fuzz", Call: "c1"}, Legs: []session.Leg{{Name: "a"}, {Name: "b"}}}
	seed(0, wire.PlaceRequest{V: wire.V, Call: spec, Epoch: 1, Ingest: "ingest-1", Pools: []string{"default"}})
	seed(2, wire.CallQuery{V: wire.V, Tenant: "fuzz", Call: "c1"})
	seed(5, wire.WorkerHeartbeat{V: wire.V, ID: "worker-1", Pool: "default", Capacity: -1, IntervalMS: 1})
	seed(7, wire.IngestHeartbeat{V: wire.V, ID: "ingest-1", IntervalMS: 500})
	seed(10, wire.Down{V: wire.V, Component: subjects.Worker, ID: "worker-1"})
	seed(12, wire.ReplayRequest{V: wire.V, Tenant: "fuzz", Call: "c1", Epoch: 1, Legs: []wire.LegRange{{Leg: 200, From: -5, To: 1 << 40}}})
	seed(13, wire.Migrate{V: wire.V, Tenant: "fuzz", Call: "c1", Epoch: 1 << 31, Worker: "worker-1"})
	seed(14, wire.Offer{V: wire.V, Call: spec, Epoch: 1, Ingest: "ingest-1", Pool: "default", Resume: []session.LegSeq{{Leg: 9, Next: -7}}})
	seed(15, wire.Release{V: wire.V, Tenant: "fuzz", Call: "c1", Epoch: 1})
	f.Add(uint8(17), []byte(`{"stop":true}`))
	f.Add(uint8(6), []byte(`{"calls":[{"tenant":"x"}],"id":"ghost","interval_ms":500}`))
	f.Add(uint8(1), []byte("\x00\xff{"))
	if controlSubjects[callListSubject] != subjects.HeartbeatCalls(subjects.Worker, "worker-1") {
		f.Fatalf("callListSubject %d is %s", callListSubject, controlSubjects[callListSubject])
	}
	// Call lists: a worker's full snapshot, a delta out of order, a delta that forges a call
	// gone, a seq at the top of its range (the next wraps), a snapshot naming another id, an
	// ingest's list with a placement on a ghost worker.
	wcall := wire.WorkerCall{Tenant: "fuzz", Call: "c1", Epoch: 1, Ingest: "ingest-1", Progress: []session.LegSeq{{Leg: 0, Next: 5}}}
	seed(callListSubject, wire.WorkerState{V: wire.VHeartbeat, ID: "worker-1", Seq: 1, Full: true, Calls: []wire.WorkerCall{wcall}})
	seed(callListSubject, wire.WorkerState{V: wire.VHeartbeat, ID: "worker-1", Seq: 7, Calls: []wire.WorkerCall{wcall}})
	seed(callListSubject, wire.WorkerState{V: wire.VHeartbeat, ID: "worker-1", Seq: 2, Gone: []session.ID{{Tenant: "fuzz", Call: "c1"}, {}}})
	seed(callListSubject, wire.WorkerState{V: wire.VHeartbeat, ID: "worker-1", Seq: 1<<64 - 1, Full: true})
	seed(callListSubject, wire.WorkerState{V: wire.VHeartbeat, ID: "ingest-1", Seq: 3, Full: true})
	seed(callListSubject+1, wire.IngestState{V: wire.VHeartbeat, ID: "ingest-1", Seq: 1, Full: true,
		Calls: []wire.IngestCall{{Tenant: "fuzz", Call: "c1", Epoch: 1 << 31, Placements: []wire.Placement{{Worker: "ghost", Pool: "default"}}}}})
	seed(callListSubject+2, wire.WorkerState{V: wire.VHeartbeat, ID: "ghost", Seq: 1, Full: true, Calls: []wire.WorkerCall{wcall, wcall}})
	seed(callListSubject+3, wire.IngestState{V: wire.VHeartbeat, ID: "ghost", Seq: 2, Gone: []session.ID{{Tenant: "fuzz", Call: "c1"}}})
	f.Add(uint8(callListSubject+4), []byte(`{"v":2,"id":"ghost","seq":1,"full":true,"calls":[{}]}`))
	f.Add(uint8(callListSubject), []byte(`{"v":2,"id":"worker-1","seq":1,"full":true,"calls":[null,{"progress":[{"leg":255,"next":-9223372036854775808}]}],"gone":[null]}`))
	for i := range controlSubjects {
		f.Add(uint8(i), []byte(`{}`))
	}

	s, err := Start(Config{Workers: 1, Worker: testWorkerConfig(), Log: zerolog.Nop()})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = s.Close() })
	nc, err := nats.Connect(s.URL)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(nc.Close)

	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		before := panicsSeen(t)
		subject := controlSubjects[int(which)%len(controlSubjects)]
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		_, _ = nc.RequestWithContext(ctx, subject, data) // many subjects answer nothing: a timeout is fine
		cancel()
		var rep wire.WorkersReply
		ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := bus.Request(ctx, nc, subjects.API("workers"), struct{}{}, &rep); err != nil || !rep.OK {
			t.Fatalf("after %q on %s the router's admin API does not answer: %v %+v", data, subject, err, rep.Reply)
		}
		if d := panicsSeen(t) - before; d != 0 {
			t.Fatalf("%q on %s caused %v contained panic(s)", data, subject, d)
		}
	})
}
