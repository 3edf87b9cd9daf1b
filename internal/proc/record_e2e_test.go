package proc_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/player"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wav"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
)

// TestRecordFailureReachesTheBus runs the one-process stack: a record dir that cannot be created
// stops the worker from starting with a message naming it; a tenant directory that cannot be
// created makes the call's "recording" event arrive over NATS with status failed, the call's
// other events still arrive, and callrouter_recordings_total counts it on the worker's registry.
func TestRecordFailureReachesTheBus(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "acme"), nil, 0o640); err != nil { // where the tenant's directory goes
		t.Fatal(err)
	}
	wc := worker.DefaultConfig()
	wc.Processors = []string{"accounting", "record", "summary"}
	wc.ProcessorOptions = map[string]proc.Options{"record": {"dir": filepath.Join(dir, "acme", "rec")}}
	if _, err := worker.New(wc, worker.Deps{Log: zerolog.Nop()}); err == nil || !strings.Contains(err.Error(), "record: dir") {
		t.Fatalf("worker.New with a record dir under a file: %v", err)
	}
	if err := wc.Validate(); err == nil || !strings.Contains(err.Error(), "record: dir") {
		t.Fatalf("Validate with a record dir under a file: %v", err)
	}

	wc.ProcessorOptions = map[string]proc.Options{"record": {"dir": dir}}
	reg := prometheus.NewRegistry()
	s, err := stack.Start(stack.Config{Workers: 1, Worker: wc, Log: zerolog.Nop(), Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	nc, err := nats.Connect(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var mu sync.Mutex
	events := map[string][]wire.Event{}
	sub, err := nc.Subscribe(subjects.EventsCall("acme", "nodir"), func(m *nats.Msg) {
		var ev wire.Event
		if json.Unmarshal(m.Data, &ev) == nil {
			mu.Lock()
			events[ev.Kind] = append(events[ev.Kind], ev)
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(s.Routers[0].Workers()) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("no worker visible to the router")
		}
		time.Sleep(20 * time.Millisecond)
	}
	rec, err := filesrc.FromAudio(&wav.Audio{Format: wav.FormatMuLaw, Rate: 8000, BitsPerSample: 8, Channels: [][]byte{make([]byte, 8000)}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := player.Play(ctx, s.Ingest, rec, rec.Spec("acme", "nodir", nil), 0, 4); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(15 * time.Second)
	for {
		mu.Lock()
		done := len(events["summary"]) > 0
		mu.Unlock()
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no summary event; got %v", kinds(events))
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(events["recording"]) != 1 {
		t.Fatalf("%d recording events", len(events["recording"]))
	}
	var r proc.Recording
	if err := json.Unmarshal(events["recording"][0].Data, &r); err != nil {
		t.Fatal(err)
	}
	if r.Status != proc.RecFailed || r.Reason != "open" || !strings.Contains(r.Error, "acme") || r.Path != "" {
		t.Fatalf("recording event %+v", r)
	}
	if len(events["accounting"]) != 1 {
		t.Fatalf("the call's other events: %v", kinds(events))
	}
	if n, err := testutil.GatherAndCount(reg, "callrouter_recordings_total"); err != nil || n == 0 {
		t.Fatalf("callrouter_recordings_total not on the worker's registry (%d series, %v)", n, err)
	}
}
