package worker_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/nats-io/nats.go"
	dto "github.com/prometheus/client_model/go"
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

// gateOffers makes every offer of a call in gated wait, once subscribed and before it is
// accepted, until the test calls open (done at the end of the test at the latest); reached
// receives the epoch of each offer of those calls that got there.
func gateOffers(t *testing.T, gated ...string) (open func(), reached chan uint32) {
	gate := make(chan struct{})
	reached = make(chan uint32, 16)
	var once sync.Once
	open = func() { once.Do(func() { close(gate) }) }
	worker.OnOfferSubscribed(func(id session.ID, epoch uint32) {
		if slices.Contains(gated, id.Call) {
			reached <- epoch
			<-gate
		}
	})
	t.Cleanup(func() {
		open()
		worker.OnOfferSubscribed(nil)
	})
	return open, reached
}

// offerAsync sends an offer without waiting; its answer comes on the returned channel.
func (l *lone) offerAsync(t *testing.T, o wire.Offer) <-chan wire.OfferReply {
	t.Helper()
	o.V, o.Pool, o.Ingest = wire.V, "default", "in1"
	data, _ := json.Marshal(o)
	out := make(chan wire.OfferReply, 1)
	inbox := nats.NewInbox()
	sub, err := l.nc.Subscribe(inbox, func(m *nats.Msg) {
		var r wire.OfferReply
		if err := json.Unmarshal(m.Data, &r); err != nil {
			t.Errorf("offer reply %q: %v", m.Data, err)
		}
		out <- r
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.AutoUnsubscribe(1); err != nil {
		t.Fatal(err)
	}
	if err := l.nc.PublishRequest(subjects.WorkerVerb(l.id, subjects.WorkerVerbOffer), inbox, data); err != nil {
		t.Fatal(err)
	}
	return out
}

func waitReply(t *testing.T, ch <-chan wire.OfferReply, what string) wire.OfferReply {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatalf("no answer to %s", what)
		return wire.OfferReply{}
	}
}

// An offer whose setup is slow (here: held after subscribing) does not hold up the offers of other
// calls behind it, as it did when a worker set offers up one at a time and a burst of new calls
// each waited for every flush before its own.
func TestOffersOfOtherCallsDoNotWait(t *testing.T) {
	l := startLone(t, workerConfig())
	open, reached := gateOffers(t, "slow")
	slow := l.offerAsync(t, wire.Offer{Call: spec("slow"), Epoch: 1})
	select {
	case <-reached:
	case <-time.After(10 * time.Second):
		t.Fatal("the slow offer was not set up")
	}
	for i := range 3 {
		call := fmt.Sprintf("fast-%d", i)
		if r := waitReply(t, l.offerAsync(t, wire.Offer{Call: spec(call), Epoch: 1}), call); !r.OK {
			t.Fatalf("%s refused: %+v", call, r.Reply)
		}
	}
	select {
	case r := <-slow:
		t.Fatalf("the held offer was answered (%+v)", r.Reply)
	default:
	}
	open()
	if r := waitReply(t, slow, "the slow offer"); !r.OK {
		t.Fatalf("the slow offer was refused: %+v", r.Reply)
	}
	if n := l.w.Calls(); n != 4 {
		t.Fatalf("worker holds %d calls, want 4", n)
	}
}

// Offers of one call are set up one after another: a retry at a higher epoch waits for the first
// offer, which has reserved the call but not yet accepted it, instead of advancing a call that
// the first offer may still refuse; it is answered after the first, and the call ends at its epoch.
func TestOffersOfOneCallStayOrdered(t *testing.T) {
	l := startLone(t, workerConfig())
	open, reached := gateOffers(t, "same")
	first := l.offerAsync(t, wire.Offer{Call: spec("same"), Epoch: 1})
	select {
	case e := <-reached:
		if e != 1 {
			t.Fatalf("epoch %d set up first, want 1", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first offer was not set up")
	}
	second := l.offerAsync(t, wire.Offer{Call: spec("same"), Epoch: 2})
	// Answered after the retry was read from the subscription: by then the retry is queued (or,
	// set up alongside, would have advanced the reserved call and been answered at once).
	if r := waitReply(t, l.offerAsync(t, wire.Offer{Call: spec("other"), Epoch: 1}), "other"); !r.OK {
		t.Fatalf("other refused: %+v", r.Reply)
	}
	select {
	case r := <-second:
		t.Fatalf("the retry was answered (%+v) before the offer it retries", r.Reply)
	default:
	}
	open()
	r1 := waitReply(t, first, "epoch 1")
	r2 := waitReply(t, second, "epoch 2")
	if !r1.OK || !r2.OK {
		t.Fatalf("answers %+v, %+v; want both accepted", r1.Reply, r2.Reply)
	}
	// The call runs at epoch 2: its frames are processed, epoch 1's would be stale.
	l.send(t, "same", 0, 2, 0, frame.FlagEpochStart)
	eventually(t, 10*time.Second, "an epoch 2 frame processed", func() bool { return len(rec.seqsOf("acme/same/0")) == 1 })
}

// A panic while an offer is set up frees its slot and its place in the call's queue: the offer
// is not answered (the router times out as on a lost message), and the next offers of the call
// and of other calls are set up.
func TestOfferPanicFreesTheSlot(t *testing.T) {
	wc := workerConfig()
	wc.Capacity = 1
	l := startLone(t, wc)
	panics := func() float64 {
		var m dto.Metric
		if err := guard.Panics.WithLabelValues("worker_offer").Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetCounter().GetValue()
	}
	before := panics()
	var once sync.Once
	worker.OnOfferSubscribed(func(id session.ID, epoch uint32) {
		if id.Call == "boom" && epoch == 1 {
			once.Do(func() { panic("offer bug") })
		}
	})
	t.Cleanup(func() { worker.OnOfferSubscribed(nil) })
	lost := l.offerAsync(t, wire.Offer{Call: spec("boom"), Epoch: 1})
	if r := waitReply(t, l.offerAsync(t, wire.Offer{Call: spec("boom"), Epoch: 2}), "the retry"); !r.OK {
		t.Fatalf("the retry after a panic was refused: %+v", r.Reply)
	}
	select {
	case r := <-lost:
		t.Fatalf("the offer that panicked was answered: %+v", r.Reply)
	default:
	}
	if n := panics() - before; n != 1 {
		t.Errorf("%v panics counted, want 1", n)
	}
	// The one slot is the retry's: a third call is refused full, and taken once the retry ends.
	if r := l.offer(t, wire.Offer{Call: spec("third"), Epoch: 1}); r.OK || r.Code != wire.CodeFull {
		t.Fatalf("a third call on a one-call worker answered %+v, want %s", r.Reply, wire.CodeFull)
	}
	for leg := range 2 {
		l.send(t, "boom", uint8(leg), 2, 0, frame.FlagEpochStart|frame.FlagLast)
	}
	eventually(t, 10*time.Second, "the call to end", func() bool { return l.w.Calls() == 0 })
	if r := l.offer(t, wire.Offer{Call: spec("third"), Epoch: 1}); !r.OK {
		t.Fatalf("third refused on an empty worker: %+v", r.Reply)
	}
}
