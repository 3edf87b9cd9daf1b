package inproc

import (
	"context"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/callrouter/callrouter/loadtest"
	"github.com/callrouter/callrouter/loadtest/probe"
)

// TestWHIPModeInProcess plays calls as pion WHIP clients into callrouter's own WebRTC ingest:
// ICE, DTLS and SRTP on loopback, one leg per call, every frame accounted for.
func TestWHIPModeInProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("a 3 s WHIP run")
	}
	cfg := loadtest.DefaultConfig()
	cfg.Mode = loadtest.ModeWHIP
	cfg.Inputs = []string{writeTone(t, t.TempDir(), 3*time.Second)}
	cfg.Calls = 4
	cfg.Ramp = 50
	cfg.Tenant = "lt-whip"
	cfg.MaxLoss = 0
	cfg.MaxRefused = 0
	cfg.Progress = 0
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rep, err := loadtest.Run(ctx, cfg, loadtest.Deps{Harness: Start, Log: testLog(t), StackLog: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	p := rep.Phases[0]
	const want = 4 * 150
	if p.Completed != 4 || p.Totals.Legs != 4 || p.Totals.Sent != want || p.Totals.Received != want || p.Latency.Count != want {
		t.Errorf("%d calls, %d legs, sent %d, received %d, %d timed; want 4, 4, %d, %d, %d", p.Completed, p.Totals.Legs, p.Totals.Sent,
			p.Totals.Received, p.Latency.Count, want, want, want)
	}
	if !rep.Pass || p.Totals.Stops["end"] != 4 {
		t.Errorf("failures %v, stops %v, worst legs %+v", rep.Failures, p.Totals.Stops, p.WorstLegs)
	}
	if p.Setup.Count != 4 || p.Setup.P50 <= 0 {
		t.Errorf("setup %+v: want 4 POST→connected times", p.Setup)
	}
}

// TestWHIPModeRemote points the WHIP mode at an endpoint and NATS it did not start (-whip,
// -nats): calls are named by the endpoint and their accounts come back from the workers' events.
func TestWHIPModeRemote(t *testing.T) {
	if testing.Short() {
		t.Skip("a 2 s WHIP run")
	}
	wc := worker.DefaultConfig()
	wc.Processors = []string{"accounting", probe.ProcessorName}
	st, err := stack.Start(stack.Config{Workers: 1, Worker: wc, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	url, stop, err := startWHIP(st.Ingest, "lt-whip-remote", 3, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	cfg := loadtest.DefaultConfig()
	cfg.Mode = loadtest.ModeWHIP
	cfg.WHIP, cfg.NATSURL = url, st.URL
	cfg.Inputs = []string{writeTone(t, t.TempDir(), 2*time.Second)}
	cfg.Calls = 3
	cfg.Ramp = 50
	cfg.Tenant = "lt-whip-remote"
	cfg.MaxLoss = 0
	cfg.Progress = 0
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rep, err := loadtest.Run(ctx, cfg, loadtest.Deps{Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	p := rep.Phases[0]
	if p.Totals.Sent != 3*100 || p.Totals.Received != p.Totals.Sent || p.Latency.Count != p.Totals.Sent || !rep.Pass {
		t.Errorf("sent %d, received %d, %d timed, failures %v, worst %+v", p.Totals.Sent, p.Totals.Received, p.Latency.Count, rep.Failures, p.WorstLegs)
	}
}
