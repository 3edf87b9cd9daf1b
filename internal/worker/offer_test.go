package worker_test

import (
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
)

// blockProc ("wtblock") holds a call's Stop until the test closes the call's gate: the call
// stays in the stopping state for as long as the test wants.
type blockProc struct{}
type blockCall struct{ c proc.Call }

var stopGates sync.Map // call id string → chan struct{}

func init() {
	proc.Register("wtblock", func(proc.Options) (proc.Processor, error) { return blockProc{}, nil })
}

func (blockProc) Start(c proc.Call) (proc.Handler, error) { return blockCall{c}, nil }
func (blockCall) Frame(*proc.Frame)                       {}
func (b blockCall) Stop(string) {
	if g, ok := stopGates.Load(b.c.Spec().ID.String()); ok {
		<-g.(chan struct{})
	}
}

func (l *lone) release(t *testing.T, r wire.Release) wire.ReleaseReply {
	t.Helper()
	r.V = wire.V
	data, _ := json.Marshal(r)
	m, err := l.nc.Request(subjects.WorkerVerb(l.id, subjects.WorkerVerbRelease), data, 5*time.Second)
	if err != nil {
		t.Fatalf("release: %v", err)
	}
	var rep wire.ReleaseReply
	if err := json.Unmarshal(m.Data, &rep); err != nil {
		t.Fatal(err)
	}
	return rep
}

// An offer for a call that is stopping is not answered OK while the call goes away: it waits
// for the stop and takes the call fresh, or, if the stop takes too long, refuses.
func TestOfferToStoppingCall(t *testing.T) {
	wc := workerConfig()
	wc.Processors = []string{"wtseq", "wtblock"}
	l := startLone(t, wc)
	for _, tc := range []struct {
		call    string
		unblock time.Duration // when the stop may finish; 0 never during the offer
		want    bool
	}{{"slow-stop", 10 * time.Millisecond, true}, {"stuck-stop", 0, false}} {
		gate := make(chan struct{})
		stopGates.Store("acme/"+tc.call, gate)
		if r := l.offer(t, wire.Offer{Call: spec(tc.call), Epoch: 1}); !r.OK {
			t.Fatalf("%s: first offer refused: %+v", tc.call, r.Reply)
		}
		// Release without waiting for the answer (it comes when the stop has finished).
		data, _ := json.Marshal(wire.Release{V: wire.V, Tenant: "acme", Call: tc.call, Epoch: 1, Reason: "test"})
		if err := l.nc.Publish(subjects.WorkerVerb(l.id, subjects.WorkerVerbRelease), data); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "the call to start stopping", func() bool {
			return len(rec.stopsOf("acme/"+tc.call)) == 1
		})
		if tc.unblock > 0 {
			time.AfterFunc(tc.unblock, func() { close(gate) })
		}
		r := l.offer(t, wire.Offer{Call: spec(tc.call), Epoch: 2})
		if r.OK != tc.want {
			t.Fatalf("%s: re-offer while stopping answered %+v, want ok=%v", tc.call, r.Reply, tc.want)
		}
		if tc.unblock == 0 {
			close(gate)
			eventually(t, 5*time.Second, "the stuck call to go", func() bool { return l.w.Calls() == 0 })
			continue
		}
		// Taken fresh: the worker holds the call at epoch 2 and processes its frames.
		l.send(t, tc.call, 0, 2, 0, frame.FlagEpochStart)
		l.send(t, tc.call, 1, 2, 0, frame.FlagEpochStart)
		eventually(t, 5*time.Second, "epoch 2 frames processed", func() bool {
			return len(rec.seqsOf("acme/"+tc.call+"/0")) == 1 && len(rec.seqsOf("acme/"+tc.call+"/1")) == 1
		})
		if n := l.w.Calls(); n != 1 {
			t.Fatalf("%s: worker holds %d calls after the re-offer was accepted, want 1", tc.call, n)
		}
		for leg := range 2 {
			l.send(t, tc.call, uint8(leg), 2, 1, frame.FlagLast)
		}
		eventually(t, 5*time.Second, "the call to end", func() bool { return l.w.Calls() == 0 })
	}
}
