package loadtest

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/callrouter/callrouter/loadtest/account"
	"github.com/nats-io/nats.go"
)

// legsOf is a call's worker-side account: n frames received in order on each of two legs.
func legsOf(n uint32) []account.Leg {
	legs := []account.Leg{account.NewLeg(), account.NewLeg()}
	for i := range legs {
		for seq := range n {
			legs[i].InOrder(seq)
		}
	}
	return legs
}

// The hand-over names the collector knows are proc's.
func TestHandOversAreProcsStops(t *testing.T) {
	want := map[string]bool{proc.StopReleased: true, proc.StopSuperseded: true, proc.StopMigrated: true}
	if len(handOvers) != len(want) {
		t.Fatalf("hand-overs %v, want %v", handOvers, want)
	}
	for k := range want {
		if !handOvers[k] {
			t.Errorf("hand-overs %v lack %q", handOvers, k)
		}
	}
}

// The settle wait behind g1-2500's unaccounted calls: it counted reports, and a call handed
// over reports twice (released, then end from its next worker), as does a call a second worker
// held by mistake. With two calls, one released and re-placed and the other ended with a
// stray second report, the count reached two while the first call's last report was still on
// its way: the wait ended, that report came too late and the call's frames were unaccounted.
// The wait is for each call's last report.
func TestSettleWaitsForEveryCallsLastReport(t *testing.T) {
	c := newCollector("settle", time.Now(), time.Second, 2)
	c.sent("a", []int64{10, 10})
	c.sent("b", []int64{10, 10})
	c.Report("a", proc.StopReleased, legsOf(4)) // its first worker's part
	c.Report("b", proc.StopEnd, legsOf(10))
	c.Report("b", proc.StopReleased, legsOf(0)) // a second worker that held b by mistake

	r := &runner{cfg: Config{Settle: time.Minute}}
	e := &phaseEnds{}
	if got := e.reported(c); got != 1 {
		t.Fatalf("reported %d calls, want 1 (b; a's last report has not come)", got)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.settle(e, c, 2)
	}()
	select {
	case <-done:
		t.Fatal("settle returned before call a's last report")
	case <-time.After(200 * time.Millisecond):
	}
	c.Report("a", proc.StopEnd, []account.Leg{seqsFrom(4, 10), seqsFrom(4, 10)}) // its next worker's part
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("settle still waiting after every call's last report")
	}
	tot, _ := c.finish(10)
	if tot.Unaccounted != 0 || tot.Received != 40 || tot.Stops[proc.StopEnd] != 2 {
		t.Errorf("totals %+v, want 40 received, none unaccounted, 2 ends", tot)
	}
}

// seqsFrom is one leg's account of frames from to to-1 received in order.
func seqsFrom(from, to uint32) account.Leg {
	l := account.NewLeg()
	for seq := from; seq < to; seq++ {
		l.InOrder(seq)
	}
	return l
}

// A remote stack's reports come as events; a call handed over sends one from each worker that
// had it. Each counts (the last one used to replace the others, whose frames were then
// unaccounted), and the call has reported only once its last one has come.
func TestEventsKeepEveryReportOfACall(t *testing.T) {
	c := newCollector("events", time.Now(), time.Second, 2)
	c.sent("run-a", []int64{10, 10})
	s := newEventSink(c, "run")
	publish := func(stop string, legs []account.Leg) {
		data, _ := json.Marshal(account.NewCallReport(stop, legs, nil))
		ev, _ := json.Marshal(wire.Event{V: wire.V, Kind: account.EventKind, Tenant: "events", Call: "run-a", Data: data})
		s.onEvent(&nats.Msg{Data: ev})
	}
	publish(proc.StopMigrated, legsOf(4)) // drained away from its first worker
	if n := s.calls(); n != 0 {
		t.Fatalf("%d calls reported after a hand-over, want 0", n)
	}
	publish(proc.StopEnd, []account.Leg{seqsFrom(4, 10), seqsFrom(4, 10)})
	if n := s.calls(); n != 1 {
		t.Fatalf("%d calls reported after the last report, want 1", n)
	}
	s.finish()
	tot, _ := c.finish(10)
	if tot.Unaccounted != 0 || tot.Received != 20 || tot.Stops[proc.StopMigrated] != 1 || tot.Stops[proc.StopEnd] != 1 {
		t.Errorf("totals %+v, want 20 received from both reports, none unaccounted", tot)
	}
}
