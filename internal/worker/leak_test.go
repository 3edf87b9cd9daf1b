package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

// After calls come and go (accepted, released, controlled, migrated away at shutdown) and the
// worker shuts down while offers and releases keep arriving, every goroutine it started has
// exited and every subscription it made is gone from the server.
func TestNoLeakAfterChurnAndShutdown(t *testing.T) {
	rec.reset()
	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// The test connection's request inbox exists before the baseline.
	if _, err := nc.Request("nobody.here", nil, time.Second); err == nil {
		t.Fatal("a request to nobody was answered")
	}
	// A fake ingest that takes migration requests and never answers: the worker's migrations
	// (shedding, drain) stay in flight until their own timeouts.
	var placeReqs atomic.Int32
	placeSub, err := nc.Subscribe(subjects.IngestVerb("in1", subjects.IngestVerbPlace), func(*nats.Msg) { placeReqs.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer placeSub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	baseSubs := srv.Subscriptions()
	leaks := goleak.IgnoreCurrent()

	wnc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	wc := workerConfig()
	wc.ID = "w1"
	wc.Processors = []string{"wtseq", "wtslow"}
	wc.DrainTimeout = time.Second // nobody answers the migrations
	wc.LagThreshold = 50 * time.Millisecond
	wc.ShedAfter = 200 * time.Millisecond
	w, err := worker.New(wc, worker.Deps{NC: wnc, Log: testLogger(t), Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	l := &lone{w: w, nc: nc, id: "w1"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	eventually(t, 10*time.Second, "the worker to subscribe", func() bool { return srv.Subscriptions() >= baseSubs+2 })

	const calls = 20
	for i := range calls {
		name := fmt.Sprintf("churn-%d", i)
		if r := l.offer(t, wire.Offer{Call: spec(name), Epoch: 1}); !r.OK {
			t.Fatalf("offer %s: %+v", name, r.Reply)
		}
		for seq := range uint32(5) {
			var fl frame.Flags
			if seq == 0 {
				fl = frame.FlagEpochStart
			}
			l.send(t, name, 0, 1, seq, fl)
			l.send(t, name, 1, 1, seq, fl)
		}
	}
	for i := range calls {
		name := fmt.Sprintf("churn-%d", i)
		switch i % 3 {
		case 0: // released by the router
			if r := l.release(t, wire.Release{Tenant: "acme", Call: name, Epoch: 1, Reason: "test"}); !r.OK {
				t.Fatalf("release %s: %+v", name, r.Reply)
			}
		case 1: // controlled
			data, _ := json.Marshal(wire.CtlRequest{V: wire.V, Command: "status"})
			if _, err := nc.Request(subjects.Ctl("acme", name), data, 5*time.Second); err != nil {
				t.Fatalf("ctl %s: %v", name, err)
			}
		case 2: // ended by ingest
			l.send(t, name, 0, 1, 5, frame.FlagLast)
			l.send(t, name, 1, 1, 5, frame.FlagLast)
		}
	}
	// A call that falls behind: the worker sheds it, and the migration request hangs.
	if r := l.offer(t, wire.Offer{Call: spec("slow-1"), Epoch: 1}); !r.OK {
		t.Fatalf("offer slow-1: %+v", r.Reply)
	}
	for seq := range uint32(60) {
		var fl frame.Flags
		if seq == 0 {
			fl = frame.FlagEpochStart
		}
		l.send(t, "slow-1", 0, 1, seq, fl)
	}
	eventually(t, 20*time.Second, "the lagging call to be shed", func() bool { return placeReqs.Load() > 0 })

	// Shut down while offers and releases keep coming.
	stopChurn := make(chan struct{})
	var churn sync.WaitGroup
	churn.Add(1)
	go func() {
		defer churn.Done()
		for i := 0; ; i++ {
			select {
			case <-stopChurn:
				return
			default:
			}
			o, _ := json.Marshal(wire.Offer{V: wire.V, Call: spec(fmt.Sprintf("late-%d", i)), Epoch: 1, Pool: "default", Ingest: "in1"})
			_, _ = nc.Request(subjects.WorkerVerb("w1", subjects.WorkerVerbOffer), o, time.Second)
			r, _ := json.Marshal(wire.Release{V: wire.V, Tenant: "acme", Call: fmt.Sprintf("late-%d", i), Epoch: 1})
			_, _ = nc.Request(subjects.WorkerVerb("w1", subjects.WorkerVerbRelease), r, time.Second)
		}
	}()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return")
	}
	// Nothing the worker started outlives Run.
	if st := workerStacks(); st != "" {
		t.Errorf("worker goroutines still running after Run returned:\n%s", st)
	}
	close(stopChurn)
	churn.Wait()
	if n := w.Calls(); n != 0 {
		t.Errorf("%d calls held after shutdown", n)
	}
	// The worker's connection keeps at most its request inbox.
	if err := wnc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := wnc.NumSubscriptions(); n > 1 {
		t.Errorf("worker connection holds %d subscriptions after shutdown, want at most its request inbox", n)
	}
	eventually(t, 10*time.Second, "the server's subscriptions to return to baseline", func() bool {
		return int(srv.Subscriptions()) <= int(baseSubs)+wnc.NumSubscriptions()
	})
	wnc.Close()
	eventually(t, 10*time.Second, "the server's subscriptions to return to baseline", func() bool {
		return srv.Subscriptions() == baseSubs
	})
	goleak.VerifyNone(t, leaks)
}

// workerStacks returns the stacks of the goroutines running code of package worker (not its
// tests).
func workerStacks() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "internal/worker.") && !strings.Contains(g, "internal/worker_test.") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

// slowProc ("wtslow") takes 30 ms over every frame of calls named slow-*: a call the worker
// cannot keep up with.
type slowProc struct{}
type slowCall struct{ slow bool }

func init() {
	proc.Register("wtslow", func(proc.Options) (proc.Processor, error) { return slowProc{}, nil })
}

func (slowProc) Start(c proc.Call) (proc.Handler, error) {
	return slowCall{strings.HasPrefix(c.Spec().Call, "slow-")}, nil
}
func (s slowCall) Frame(*proc.Frame) {
	if s.slow {
		time.Sleep(30 * time.Millisecond)
	}
}
func (slowCall) Stop(string) {}
