package worker_test

import (
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// panicProc ("wtpanic") panics on frame 50 of leg 0 of every call whose name starts with "boom".
type panicProc struct{}
type panicCall struct{ boom bool }

func init() {
	proc.Register("wtpanic", func(proc.Options) (proc.Processor, error) { return panicProc{}, nil })
}

func (panicProc) Start(c proc.Call) (proc.Handler, error) {
	return panicCall{strings.HasPrefix(c.Spec().Call, "boom")}, nil
}
func (p panicCall) Frame(f *proc.Frame) {
	if p.boom && f.Header.Leg == 0 && f.Header.Seq == 50 {
		var m map[string]int
		m["processor bug"]++ // a nil map write: a real runtime panic
	}
}
func (panicCall) Stop(string) {}

// A processor that panics ends its own call, with an error event and a counted panic; the other
// call on the same worker keeps every frame and the worker keeps running.
func TestProcessorPanicEndsOnlyItsCall(t *testing.T) {
	wc := workerConfig()
	wc.Processors = []string{"accounting", "wtseq", "wtpanic"}
	s := startStack(t, wc, 1)
	nc, err := nats.Connect(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var mu sync.Mutex
	var errorEvents []wire.Event
	var stopped []string
	sub, err := nc.Subscribe(subjects.EventsCall("acme", "boom-0"), func(m *nats.Msg) {
		var ev wire.Event
		if json.Unmarshal(m.Data, &ev) != nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		switch ev.Kind {
		case "error":
			errorEvents = append(errorEvents, ev)
		case "stopped":
			stopped = append(stopped, string(ev.Data))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	before := testutil.ToFloat64(guard.Panics.WithLabelValues("worker_call"))

	const frames = 150
	playNamed(t, s, []string{"boom-0", "calm-0"}, frames)
	waitComplete(t, "calm", 1, frames)
	if got := rec.seqsOf("acme/boom-0/0"); len(got) != 51 {
		t.Errorf("the panicking call processed %d frames of leg 0, want 51 (0..50: it ends at the panic on 50)", len(got))
	}
	eventually(t, 5*time.Second, "the error event", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(errorEvents) == 1 && len(stopped) == 1
	})
	mu.Lock()
	var data map[string]any
	_ = json.Unmarshal(errorEvents[0].Data, &data)
	if data["reason"] != "panic" || !strings.Contains(data["panic"].(string), "nil map") {
		t.Errorf("error event data %s, want reason panic and the panic value", errorEvents[0].Data)
	}
	if !strings.Contains(stopped[0], `"reason":"error"`) {
		t.Errorf("stopped event %s, want reason error", stopped[0])
	}
	mu.Unlock()
	if d := testutil.ToFloat64(guard.Panics.WithLabelValues("worker_call")) - before; d != 1 {
		t.Errorf("callrouter_panics_total{where=worker_call} rose by %v, want 1", d)
	}
	if n := metric(t, s.Registry(), "callrouter_worker_call_panics_total", nil); n != 1 {
		t.Errorf("callrouter_worker_call_panics_total %v, want 1", n)
	}
	eventually(t, 10*time.Second, "the worker to hold no call", func() bool { return s.Workers[0].Calls() == 0 })
	// The worker still takes calls.
	play(t, s, "after", 1, 20)
	waitComplete(t, "after", 1, 20)
}

// Control panics on the command "boom".
func (panicCall) Control(cmd string, _ map[string]string) (any, bool, error) {
	if cmd == "boom" {
		panic("control bug")
	}
	return nil, false, nil
}

// A control command that panics in a processor ends that call (error event) and no other.
func TestControlPanicEndsOnlyItsCall(t *testing.T) {
	wc := workerConfig()
	wc.Processors = []string{"wtseq", "wtpanic"}
	l := startLone(t, wc)
	evs, err := l.nc.SubscribeSync(subjects.Event("acme", "victim", "error"))
	if err != nil {
		t.Fatal(err)
	}
	defer evs.Unsubscribe()
	for _, call := range []string{"victim", "bystander"} {
		if r := l.offer(t, wire.Offer{Call: spec(call), Epoch: 1}); !r.OK {
			t.Fatalf("offer %s: %+v", call, r.Reply)
		}
	}
	boom, _ := json.Marshal(wire.CtlRequest{V: 1, Command: "boom"})
	if err := l.nc.Publish(subjects.Ctl("acme", "victim"), boom); err != nil {
		t.Fatal(err)
	}
	m, err := evs.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("no error event: %v", err)
	}
	var ev wire.Event
	if err := json.Unmarshal(m.Data, &ev); err != nil || !strings.Contains(string(ev.Data), `"reason":"panic"`) {
		t.Fatalf("error event %s", m.Data)
	}
	eventually(t, 5*time.Second, "the victim to go", func() bool { return l.w.Calls() == 1 })
	for seq := range uint32(10) {
		var fl frame.Flags
		if seq == 0 {
			fl = frame.FlagEpochStart
		}
		l.send(t, "bystander", 0, 1, seq, fl)
	}
	eventually(t, 5*time.Second, "the bystander's frames", func() bool { return len(rec.seqsOf("acme/bystander/0")) == 10 })
	status, _ := json.Marshal(wire.CtlRequest{V: 1, Command: "status"})
	rm, err := l.nc.Request(subjects.Ctl("acme", "bystander"), status, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var rep wire.CtlReply
	if err := json.Unmarshal(rm.Data, &rep); err != nil || !rep.OK {
		t.Fatalf("bystander status after the panic: %s", rm.Data)
	}
}
