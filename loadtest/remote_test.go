package loadtest

import (
	"context"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/callrouter/callrouter/loadtest/probe"
)

// TestRemoteStackFromEvents points the tester at a callrouter it did not start (-nats URL): it
// places calls through an ingest node of its own and collects the workers' accounts from their
// events, with latency from pools that run the probe and counts only from pools that do not.
func TestRemoteStackFromEvents(t *testing.T) {
	if testing.Short() {
		t.Skip("two 2 s runs")
	}
	for _, tc := range []struct {
		name       string
		processors []string
		latency    bool
	}{
		{"probe", []string{"accounting", probe.ProcessorName}, true},
		{"accounting only", []string{"accounting"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wc := worker.DefaultConfig()
			wc.Processors = tc.processors
			st, err := stack.Start(stack.Config{Workers: 2, Worker: wc, Log: testLog(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			deadline := time.Now().Add(10 * time.Second)
			for len(st.Routers[0].Workers()) < 2 {
				if time.Now().After(deadline) {
					t.Fatal("workers not visible to the router")
				}
				time.Sleep(20 * time.Millisecond)
			}
			cfg := DefaultConfig()
			cfg.Inputs = []string{writeTone(t, t.TempDir(), 2*time.Second)}
			cfg.NATSURL = st.URL
			cfg.Calls = 5
			cfg.Ramp = 100
			cfg.Tenant = "lt-remote"
			cfg.MaxLoss = 0
			cfg.Progress = 0
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			rep, err := Run(ctx, cfg, Deps{Log: testLog(t)})
			if err != nil {
				t.Fatal(err)
			}
			p := rep.Phases[0]
			const want = 5 * 2 * 100
			if p.Totals.Sent != want || p.Totals.Received != want || p.LossRatio != 0 || p.Totals.Stops["end"] != 5 {
				t.Errorf("sent %d, received %d, loss %v, stops %v; want %d, %d, 0, 5 × end", p.Totals.Sent, p.Totals.Received,
					p.LossRatio, p.Totals.Stops, want, want)
			}
			if got := p.Latency.Count > 0; got != tc.latency {
				t.Errorf("latency samples %d; want some: %v", p.Latency.Count, tc.latency)
			}
			if tc.latency && p.Latency.Count != want {
				t.Errorf("latency samples %d, want %d", p.Latency.Count, want)
			}
			if !rep.Pass {
				t.Errorf("failures %v", rep.Failures)
			}
		})
	}
}
