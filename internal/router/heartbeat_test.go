package router

import (
	"encoding/json"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
)

func ingestList(calls, epoch int) []wire.IngestCall {
	out := make([]wire.IngestCall, 0, calls)
	for i := range calls {
		out = append(out, wire.IngestCall{Tenant: "acme", Call: fmt.Sprintf("call-%04d", i), Epoch: uint32(epoch),
			Placements: []wire.Placement{{Pool: "default", Worker: fmt.Sprintf("w%d", i%2)}}})
	}
	return out
}

func byID(list []wire.IngestCall) map[session.ID]wire.IngestCall {
	m := map[session.ID]wire.IngestCall{}
	for _, c := range list {
		m[ingestKey(c)] = c
	}
	return m
}

func sameCalls(a, b map[session.ID]wire.IngestCall) bool {
	return maps.EqualFunc(a, b, func(x, y wire.IngestCall) bool {
		return x.Epoch == y.Epoch && x.Paused == y.Paused && fmt.Sprint(x.Placements) == fmt.Sprint(y.Placements)
	})
}

// TestCallListFollowsSnapshotsAndDeltas plays an ingest's call list through churn (calls start,
// end, move to a new epoch, pause) as its tracker encodes it and a router folds it in: the
// router's copy equals the ingest's after every message; with one message lost it is not
// trusted (known false) until the next full snapshot, which makes it equal again.
func TestCallListFollowsSnapshotsAndDeltas(t *testing.T) {
	tr := wire.NewIngestStates("i1")
	var st callState[wire.IngestCall]
	cur := ingestList(20, 1)
	lost := false
	fulls, deltas := 0, 0
	for step := range 3 * wire.FullEvery {
		switch step % 4 {
		case 0:
			cur = append(cur, ingestList(22, 1)[20+step%2])
		case 1:
			cur = cur[1:]
		case 2:
			cur[3].Epoch++
			cur[3].Placements = []wire.Placement{{Pool: "default", Worker: "w9"}}
		case 3:
			cur[5].Paused = !cur[5].Paused
		}
		cur = append([]wire.IngestCall(nil), cur...)
		m := tr.Next(cur)
		data, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		var got wire.IngestState
		if err := json.Unmarshal(data, &got); err != nil {
			t.Fatal(err)
		}
		if got.Full {
			fulls++
		} else {
			deltas++
			if len(got.Calls)+len(got.Gone) > 2 {
				t.Errorf("step %d: a delta of one change carries %d calls and %d gone", step, len(got.Calls), len(got.Gone))
			}
		}
		if step == wire.FullEvery+2 {
			lost = true // this one never arrives
			continue
		}
		st.apply(&got, ingestKey, time.Now())
		switch {
		case lost && !got.Full:
			if st.known {
				t.Fatalf("step %d: the list is trusted after a lost delta", step)
			}
		default:
			lost = false
			if !st.known || !sameCalls(st.byID, byID(cur)) {
				t.Fatalf("step %d: known %v, router's copy differs from the ingest's list", step, st.known)
			}
		}
	}
	if fulls < 3 || deltas < 2*wire.FullEvery {
		t.Errorf("%d full snapshots and %d deltas in %d messages", fulls, deltas, 3*wire.FullEvery)
	}
}

// TestVersion1HeartbeatIsReadWithItsCalls: a heartbeat with its call list inline (version 1,
// from a component not yet upgraded) counts as liveness and as a full snapshot.
func TestVersion1HeartbeatIsReadWithItsCalls(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ID = "r1"
	r, err := New(cfg, Deps{Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	list := ingestList(3, 2)
	data, _ := json.Marshal(wire.IngestHeartbeat{V: 1, ID: "i1", IntervalMS: 500, Calls: list})
	r.onHeartbeat(&nats.Msg{Subject: subjects.Heartbeat(subjects.Ingest, "i1"), Data: data})
	data, _ = json.Marshal(wire.WorkerHeartbeat{V: 1, ID: "w0", Pool: "default", Mode: "session", Capacity: 9, IntervalMS: 500,
		Calls: []wire.WorkerCall{{Tenant: "acme", Call: "call-0000", Epoch: 2, Ingest: "i1", Progress: []session.LegSeq{{Leg: 0, Next: 7}}}}})
	r.onHeartbeat(&nats.Msg{Subject: subjects.Heartbeat(subjects.Worker, "w0"), Data: data})
	r.mu.Lock()
	defer r.mu.Unlock()
	calls, known := r.ingestCalls("i1")
	if !known || !sameCalls(calls, byID(list)) || r.ingests["i1"].hb.Active != 3 {
		t.Errorf("ingest: known %v, %d calls, active %d", known, len(calls), r.ingests["i1"].hb.Active)
	}
	wc, known := r.workerCalls("w0")
	if c := wc[session.ID{Tenant: "acme", Call: "call-0000"}]; !known || len(wc) != 1 || c.Progress[0].Next != 7 || r.workers["w0"] == nil {
		t.Errorf("worker: known %v, calls %v", known, wc)
	}
	if !r.owned(session.ID{Tenant: "acme", Call: "call-0000"}, "w0", "i1") {
		t.Error("a call both version-1 heartbeats list is not owned")
	}
}

// BenchmarkIngestCallList2500 measures what an ingest with 2,500 calls publishes per heartbeat
// interval for its call list (bytes/interval, averaged over FullEvery intervals without churn):
// version 1 sent the whole list inline every interval.
func BenchmarkIngestCallList2500(b *testing.B) {
	list := ingestList(2500, 1)
	full, _ := json.Marshal(wire.IngestHeartbeat{V: 1, ID: "i1", IntervalMS: 500, Calls: list})
	b.Run("v1-inline", func(b *testing.B) {
		for range b.N {
			data, _ := json.Marshal(wire.IngestHeartbeat{V: 1, ID: "i1", IntervalMS: 500, Calls: list})
			_ = data
		}
		b.ReportMetric(float64(len(full)), "bytes/interval")
	})
	b.Run("v2-deltas", func(b *testing.B) {
		tr := wire.NewIngestStates("i1")
		total := 0
		for i := range b.N {
			data, _ := json.Marshal(tr.Next(list))
			if i < wire.FullEvery {
				total += len(data)
			}
		}
		b.ReportMetric(float64(total)/float64(min(b.N, wire.FullEvery)), "bytes/interval")
	})
}

// TestCallListJunkIsRefused: call-list messages that do not parse, name another component, or
// carry seq 0 are counted as bad heartbeats and change nothing; a delta before any snapshot, or
// one that skips a seq, leaves the list not known complete.
func TestCallListJunkIsRefused(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ID = "r1"
	r, err := New(cfg, Deps{Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	subj := subjects.HeartbeatCalls(subjects.Ingest, "i1")
	for _, body := range []string{``, `[]`, `{"v":2,"id":"i2","seq":1,"full":true,"calls":[]}`, `{"v":2,"id":"i1","seq":0,"full":true}`,
		`{"v":2,"id":"i1","seq":1,"full":true,"calls":{}}`, `{"v":2,"id":"i1","seq":"x"}`} {
		r.onCalls(&nats.Msg{Subject: subj, Data: []byte(body)})
	}
	r.onCalls(&nats.Msg{Subject: "hb.ingest.i1.x.calls", Data: []byte(`{"v":2,"id":"i1","seq":1,"full":true,"calls":[]}`)})
	r.mu.Lock()
	if _, ok := r.istate["i1"]; ok {
		t.Error("junk created a call list")
	}
	r.mu.Unlock()
	if n := testutil.ToFloat64(r.m.badHB); n != 6 {
		t.Errorf("bad heartbeats counted: %v, want 6", n)
	}
	delta := func(seq int) {
		r.onCalls(&nats.Msg{Subject: subj, Data: fmt.Appendf(nil, `{"v":2,"id":"i1","seq":%d,"calls":[{"tenant":"acme","call":"c%d","epoch":1}]}`, seq, seq)})
	}
	known := func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		_, k := r.ingestCalls("i1")
		return k
	}
	delta(4)
	if known() {
		t.Error("a delta with no snapshot before it is taken as the whole list")
	}
	r.onCalls(&nats.Msg{Subject: subj, Data: []byte(`{"v":2,"id":"i1","seq":5,"full":true,"calls":[]}`)})
	delta(6)
	if !known() {
		t.Error("snapshot then the next delta: not known")
	}
	delta(8)
	if known() {
		t.Error("a delta after a missed seq is trusted")
	}
}
