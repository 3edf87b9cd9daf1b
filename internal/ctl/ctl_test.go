package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/player"
	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// syncBuf is a bytes.Buffer safe for a command writing while the test reads.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// ctl runs callrouterctl against url and returns its exit code and output.
func ctl(t *testing.T, url string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut syncBuf
	full := append([]string{args[0], "-nats", url}, args[1:]...)
	code := Main(full, &out, &errOut)
	return code, out.String(), errOut.String()
}

// ctlJSON runs a command with -json and decodes its output into v; it fails the test unless the
// exit code is want.
func ctlJSON(t *testing.T, url string, want int, v any, args ...string) {
	t.Helper()
	code, out, errOut := ctl(t, url, append(args, "-json")...)
	if code != want {
		t.Fatalf("callrouterctl %q = %d, want %d; stdout %s; stderr %s", args, code, want, out, errOut)
	}
	if v != nil {
		if err := json.Unmarshal([]byte(out), v); err != nil {
			t.Fatalf("callrouterctl %q: %v in %s", args, err, out)
		}
	}
}

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func startStack(t *testing.T, workers int, procs ...string) *stack.Stack {
	t.Helper()
	wc := worker.DefaultConfig()
	wc.Processors = procs
	s, err := stack.Start(stack.Config{Workers: workers, Worker: wc, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	eventually(t, 10*time.Second, "the router to see every worker", func() bool { return len(s.Routers[0].Workers()) == workers })
	return s
}

func TestUsageAndUnreachable(t *testing.T) {
	for _, args := range [][]string{
		{}, {"nope"}, {"call"}, {"call", "acme"}, {"call", "a/b", "c/d"}, {"drain"}, {"drain", "a.b"},
		{"calls", "-bogus"}, {"calls", "-timeout", "0s"}, {"workers", "extra"}, {"tail", "-kind", "a.b"},
		{"tail", "-color", "pink"}, {"top", "-interval", "1ms"}, {"check", "-frames", "0"}, {"check", "-tenant", "a b"},
	} {
		var out, errOut bytes.Buffer
		// Port 1: nothing listens, so a command that got as far as connecting would exit 3.
		if len(args) > 0 {
			args = append(args, "-nats", "nats://127.0.0.1:1")
		}
		if code := Main(args, &out, &errOut); code != ExitUsage {
			t.Errorf("callrouterctl %q = %d, want %d (usage); stderr %s", args, code, ExitUsage, errOut.String())
		}
	}
	for _, args := range [][]string{{"workers"}, {"calls", "-json"}, {"check"}} {
		var out, errOut bytes.Buffer
		if code := Main(append(args, "-nats", "nats://127.0.0.1:1"), &out, &errOut); code != ExitUnreachable {
			t.Errorf("callrouterctl %q without NATS = %d, want %d; stderr %s", args, code, ExitUnreachable, errOut.String())
		}
	}
	t.Setenv("CALLROUTER_NATS", "nats://127.0.0.1:1")
	var out, errOut bytes.Buffer
	if code := Main([]string{"workers"}, &out, &errOut); code != ExitUnreachable || !strings.Contains(errOut.String(), "127.0.0.1:1") {
		t.Errorf("CALLROUTER_NATS is not used: exit %d, stderr %s", code, errOut.String())
	}
}

func TestNoRouterIsUnreachable(t *testing.T) {
	s := startStack(t, 1, "accounting")
	s.Stop(s.Routers[0])
	eventually(t, 10*time.Second, "the router to stop answering", func() bool {
		code, _, _ := ctl(t, s.URL, "workers", "-timeout", "300ms")
		return code == ExitUnreachable
	})
}

// TestOperatorCommands runs every read command, a drain and tail against a real stack with one
// call in progress.
func TestOperatorCommands(t *testing.T) {
	s := startStack(t, 2, "accounting")
	rec, err := checkTone(50)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	played := make(chan error, 1)
	go func() {
		// 30 s of audio, looped; the test ends it by cancelling.
		_, err := player.Play(ctx, s.Ingest, rec, rec.Spec("acme", "c-1", nil), 1500, 1)
		played <- err
	}()
	defer func() {
		cancel()
		<-played
	}()

	var calls []wire.CallView
	eventually(t, 10*time.Second, "calls to list the call with progress", func() bool {
		ctlJSON(t, s.URL, ExitOK, &calls, "calls", "-tenant", "acme")
		return len(calls) == 1 && len(calls[0].Progress) == 2 && calls[0].Progress[0].Next > 0
	})
	if c := calls[0]; c.Call != "c-1" || c.Epoch != 1 || c.Ingest != "ingest-1" || len(c.Placements) != 1 {
		t.Fatalf("calls: %+v", c)
	}
	first := calls[0].Placements[0].Worker
	for _, f := range [][]string{{"-tenant", "other"}, {"-worker", "worker-9"}, {"-ingest", "ingest-9"}} {
		ctlJSON(t, s.URL, ExitOK, &calls, append([]string{"calls"}, f...)...)
		if len(calls) != 0 {
			t.Errorf("calls %q lists %+v", f, calls)
		}
	}
	ctlJSON(t, s.URL, ExitOK, &calls, "calls", "-worker", first, "-ingest", "ingest-1")
	if len(calls) != 1 {
		t.Errorf("calls -worker %s: %+v", first, calls)
	}
	code, out, _ := ctl(t, s.URL, "calls")
	if code != ExitOK || !strings.Contains(out, "acme") || !strings.Contains(out, "default="+first) || !strings.Contains(out, "1 calls") {
		t.Errorf("calls table (exit %d):\n%s", code, out)
	}

	var workers []wire.WorkerView
	ctlJSON(t, s.URL, ExitOK, &workers, "workers")
	if len(workers) != 2 || workers[0].ID != "worker-1" || workers[0].Capacity == 0 {
		t.Errorf("workers: %+v", workers)
	}
	var ingests []wire.IngestView
	eventually(t, 5*time.Second, "ingests to show the call", func() bool {
		ctlJSON(t, s.URL, ExitOK, &ingests, "ingests")
		return len(ingests) == 1 && ingests[0].Active == 1
	})
	if in := ingests[0]; in.ID != "ingest-1" || !in.Ready || in.Draining {
		t.Errorf("ingests: %+v", ingests)
	}

	// The per-tenant and per-frame series the dashboard reads, from the stack's registry.
	mfs, err := s.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch mf.GetName() {
			case "callrouter_router_tenant_calls":
				seen[mf.GetName()] += m.GetGauge().GetValue()
			case "callrouter_router_tenant_events_total":
				seen[mf.GetName()] += m.GetCounter().GetValue()
			case "callrouter_worker_frame_delay_seconds":
				seen[mf.GetName()] += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	if seen["callrouter_router_tenant_calls"] != 1 || seen["callrouter_router_tenant_events_total"] < 2 || seen["callrouter_worker_frame_delay_seconds"] == 0 {
		t.Errorf("dashboard series: %v", seen)
	}

	var rep callReport
	eventually(t, 5*time.Second, "call to show the holder's accounting so far", func() bool {
		ctlJSON(t, s.URL, ExitOK, &rep, "call", "acme/c-1")
		return len(rep.Holders) == 1 && rep.Holders[0].Accounting != nil && rep.Holders[0].Accounting.Legs[0].Processed > 0
	})
	if rep.View == nil || rep.View.Epoch != 1 || rep.Holders[0].Worker != first || rep.Holders[0].Accounting.Reason != "running" {
		t.Errorf("call: %+v", rep)
	}
	if kinds := historyKinds(rep.History); !strings.Contains(kinds, "start") || !strings.Contains(kinds, "placed") {
		t.Errorf("call history %q lacks start and placed", kinds)
	}
	// The holder answers on its call goroutine: on a loaded machine one answer may come late.
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, out, _ = ctl(t, s.URL, "call", "acme/c-1")
		if code == ExitOK && strings.Contains(out, "held by "+first) && strings.Contains(out, "processed") && strings.Contains(out, "placed") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("call text (exit %d):\n%s", code, out)
		}
	}
	if code, _, _ := ctl(t, s.URL, "call", "acme/nope"); code != ExitFailed {
		t.Errorf("call of an unknown call = %d, want %d", code, ExitFailed)
	}

	// Tail the call's placement changes while the worker holding it drains.
	tailOut := &syncBuf{}
	tailDone := make(chan int, 1)
	go func() {
		var errOut bytes.Buffer
		tailDone <- Main([]string{"tail", "acme/c-1", "-nats", s.URL, "-kind", "replaced,placed", "-n", "2", "-for", "20s", "-color", "always"}, tailOut, &errOut)
	}()
	// tail subscribes, then waits: start the drain once the server counts its subscriptions.
	eventually(t, 10*time.Second, "tail to subscribe", func() bool {
		sz, err := s.Server.Subsz(&server.SubszOptions{Subscriptions: true, Limit: 10000, Test: "events.acme.c-1.placed"})
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range sz.Subs {
			if d.Subject == "events.acme.c-1.placed" {
				return true
			}
		}
		return false
	})

	code, out, errOut := ctl(t, s.URL, "drain", first, "-wait", "20s")
	if code != ExitOK || !strings.Contains(out, "drained") {
		t.Fatalf("drain %s = %d:\n%s\n%s", first, code, out, errOut)
	}
	ctlJSON(t, s.URL, ExitOK, &calls, "calls")
	if len(calls) != 1 || calls[0].Epoch < 2 || calls[0].Placements[0].Worker == first {
		t.Errorf("after draining %s: %+v", first, calls)
	}
	if c := <-tailDone; c != ExitOK {
		t.Errorf("tail = %d", c)
	}
	if got := tailOut.String(); !regexp.MustCompile(`acme/c-1 e\d+ \x1b\[33mreplaced`).MatchString(got) || !strings.Contains(got, "\x1b[33mplaced") || strings.Count(got, "\n") != 2 {
		t.Errorf("tail printed:\n%q", got)
	}
	ctlJSON(t, s.URL, ExitOK, &workers, "workers")
	for _, w := range workers {
		if w.ID == first && (!w.Draining || w.Eligible || w.Active != 0) {
			t.Errorf("drained worker: %+v", w)
		}
	}
	// A drain request that is not JSON is refused before anything changes.
	var bad wire.DrainReply
	if err := bus.Request(context.Background(), s.Ingest.NC(), subjects.WorkerVerb(first, wire.WorkerVerbDrain), json.RawMessage(`"x"`), &bad); err != nil || bad.OK || bad.Code != wire.CodeBadRequest {
		t.Errorf("a malformed drain request: %+v, %v", bad, err)
	}
	var dr drainResult
	ctlJSON(t, s.URL, ExitOK, &dr, "drain", first, "-resume")
	if !dr.Resumed {
		t.Errorf("drain -resume: %+v", dr)
	}
	eventually(t, 5*time.Second, "the resumed worker to be eligible", func() bool {
		ctlJSON(t, s.URL, ExitOK, &workers, "workers")
		for _, w := range workers {
			if w.ID == first {
				return w.Eligible && !w.Draining
			}
		}
		return false
	})

	code, out, _ = ctl(t, s.URL, "top", "-n", "2", "-interval", "300ms")
	if code != ExitOK || strings.Count(out, "callrouter top") != 2 || !strings.Contains(out, "acme") || !strings.Contains(out, "worker-2") || strings.Contains(out, "\x1b[2J") {
		t.Errorf("top (exit %d):\n%s", code, out)
	}
	code, out, _ = ctl(t, s.URL, "top", "-n", "6", "-interval", "400ms", "-json")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != ExitOK || len(lines) != 6 {
		t.Fatalf("top -json (exit %d):\n%s", code, out)
	}
	// 2 legs × 50 frames/s; the rate comes from heartbeats every 500 ms (late ones on a loaded
	// machine), so take the best refresh and allow a wide band.
	best := 0.0
	for _, l := range lines[1:] {
		var v topView
		if err := json.Unmarshal([]byte(l), &v); err != nil || len(v.Tenants) != 1 || v.Tenants[0].Calls != 1 {
			t.Fatalf("top -json line %s: %v", l, err)
		}
		best = max(best, v.Tenants[0].FramesPerSec)
	}
	if best < 20 || best > 400 {
		t.Errorf("top: %.0f frames/s, want about 100:\n%s", best, out)
	}
}

func historyKinds(h *wire.HistoryReply) string {
	if h == nil {
		return ""
	}
	var k []string
	for _, e := range h.Events {
		k = append(k, e.Kind)
	}
	return strings.Join(k, ",")
}

func TestCheckPassesOnAHealthyCluster(t *testing.T) {
	s := startStack(t, 1, "accounting")
	var res checkResult
	ctlJSON(t, s.URL, ExitOK, &res, "check", "-frames", "25")
	if !res.Pass || len(res.Legs) != 2 || res.Legs[0].Processed != 25 || res.Legs[1].Processed != 25 || len(res.Placements) != 1 || res.PlaceMS <= 0 {
		t.Errorf("check: %+v", res)
	}
	code, out, _ := ctl(t, s.URL, "check", "-frames", "10")
	if code != ExitOK || !strings.Contains(out, "check: PASS") {
		t.Errorf("check (exit %d):\n%s", code, out)
	}
	// The synthetic calls ended: nothing of them is left on the worker or the ingest.
	eventually(t, 5*time.Second, "the checks' calls to go", func() bool { return s.Workers[0].Calls() == 0 })
}

func TestCheckFailsWithoutAccounting(t *testing.T) {
	// Workers without the accounting processor never account for the call: check must say so.
	s := startStack(t, 1, "levels")
	var res checkResult
	ctlJSON(t, s.URL, ExitFailed, &res, "check", "-frames", "10", "-wait", "1s")
	if res.Pass || !strings.Contains(res.Problem, "accounting for 0 of 10") {
		t.Errorf("check: %+v", res)
	}
}
