package inproc

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/loadtest"
	"github.com/callrouter/callrouter/loadtest/probe"
)

// TestWHIPModeInProcess plays calls as pion WHIP clients into callrouter's own WebRTC ingest:
// ICE, DTLS and SRTP on loopback, one leg per call, every frame accounted for.
func TestWHIPModeInProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("a 3 s WHIP run")
	}
	cfg := shortConfig(t, loadtest.ModeWHIP, "lt-whip", 4, 50, 3*time.Second)
	cfg.MaxRefused = 0
	rep := run(t, cfg, loadtest.Deps{Harness: Start, Log: testLog(t), StackLog: testLog(t)})
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

// TestWHIPReadCoalesceReachesTheEndpoint: -whip-read-coalesce is the in-process endpoint's
// own setting, so a value it refuses fails the run with the endpoint's error, which names the flag.
func TestWHIPReadCoalesceReachesTheEndpoint(t *testing.T) {
	cfg := shortConfig(t, loadtest.ModeWHIP, "lt-whip-rc", 1, 50, time.Second)
	bad := 20 * time.Millisecond
	cfg.WHIPReadCoalesce = &bad
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err := loadtest.Run(ctx, cfg, loadtest.Deps{Harness: Start, Log: testLog(t), StackLog: testLog(t)})
	if err == nil || !strings.Contains(err.Error(), "-whip-read-coalesce 20ms") {
		t.Fatalf("run with -whip-read-coalesce 20ms: %v, want the endpoint's refusal", err)
	}
}

// TestWHIPModeRemote points the WHIP mode at an endpoint and NATS it did not start (-whip,
// -nats): calls are named by the endpoint and their accounts come back from the workers' events.
func TestWHIPModeRemote(t *testing.T) {
	if testing.Short() {
		t.Skip("a 2 s WHIP run")
	}
	st := remoteStack(t, 1, "accounting", probe.ProcessorName)
	url, stop, err := startWHIP(st.Ingest, "lt-whip-remote", 3, nil, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	cfg := shortConfig(t, loadtest.ModeWHIP, "lt-whip-remote", 3, 50, 2*time.Second)
	cfg.WHIP, cfg.NATSURL = url, st.URL
	rep := run(t, cfg, loadtest.Deps{Log: testLog(t)}) // a black-box run: no harness
	p := rep.Phases[0]
	if p.Totals.Sent != 3*100 || p.Totals.Received != p.Totals.Sent || p.Latency.Count != p.Totals.Sent || !rep.Pass {
		t.Errorf("sent %d, received %d, %d timed, failures %v, worst %+v", p.Totals.Sent, p.Totals.Received, p.Latency.Count, rep.Failures, p.WorstLegs)
	}
}
