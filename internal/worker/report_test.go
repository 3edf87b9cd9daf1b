package worker_test

import (
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
)

// reportProc ("wtreport") ends each call with a measurement (proc.Reporter.Report, kind
// "wtshare") and an event about the call (Emit, kind "wtevent"), as the load tester's probe and
// the accounting processor do.
type reportProc struct{}
type reportCall struct{ c proc.Call }

func init() {
	proc.Register("wtreport", func(proc.Options) (proc.Processor, error) { return reportProc{}, nil })
}

func (reportProc) Start(c proc.Call) (proc.Handler, error) { return reportCall{c}, nil }
func (reportCall) Frame(*proc.Frame)                       {}
func (r reportCall) Stop(reason string) {
	r.c.(proc.Reporter).Report("wtshare", map[string]string{"stop": reason})
	r.c.Emit("wtevent", map[string]string{"stop": reason})
}

// A superseded worker publishes no event about the call (its successor does), but it does publish
// a processor's report of its own share: its successor resumes after the frames it processed, so
// without it the load tester counted them unaccounted.
func TestSupersededCallReportsItsShareOnly(t *testing.T) {
	wc := workerConfig()
	wc.Processors = append(wc.Processors, "wtreport")
	l := startLone(t, wc)
	sub, err := l.nc.SubscribeSync(subjects.EventsCall("acme", "sup"))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := l.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if r := l.offer(t, wire.Offer{Call: spec("sup"), Epoch: 1}); !r.OK {
		t.Fatalf("offer: %+v", r.Reply)
	}
	for seq := range uint32(3) {
		var fl frame.Flags
		if seq == 0 {
			fl = frame.FlagEpochStart
		}
		l.send(t, "sup", 0, 1, seq, fl)
	}
	eventually(t, 10*time.Second, "the call's frames to be processed", func() bool { return len(rec.seqsOf("acme/sup/0")) == 3 })
	l.send(t, "sup", 0, 2, 3, frame.FlagEpochStart) // another worker has the call at epoch 2
	eventually(t, 10*time.Second, "the superseded call to go", func() bool { return l.w.Calls() == 0 })
	if got := rec.stopsOf("acme/sup"); len(got) != 1 || got[0] != proc.StopSuperseded {
		t.Fatalf("stops %v, want %s", got, proc.StopSuperseded)
	}
	// The worker answers this after everything it published for the call, on the same
	// connection: those events wait in sub by the time the answer is here.
	if r := l.release(t, wire.Release{Tenant: "acme", Call: "nobody", Epoch: 1}); r.Code != wire.CodeUnknown {
		t.Fatalf("release of nothing answered %+v", r.Reply)
	}
	kinds := map[string]int{}
	for {
		m, err := sub.NextMsg(50 * time.Millisecond)
		if err != nil {
			break
		}
		kinds[m.Subject]++
	}
	if n := kinds[subjects.Event("acme", "sup", "wtshare")]; n != 1 {
		t.Errorf("a superseded call published %d reports of its share; want 1 (events %v)", n, kinds)
	}
	for _, kind := range []string{"wtevent", "accounting", "stopped"} {
		if n := kinds[subjects.Event("acme", "sup", kind)]; n != 0 {
			t.Errorf("a superseded call published %d %q events; want none", n, kind)
		}
	}
}
