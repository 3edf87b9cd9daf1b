package inproc

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/wav"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/callrouter/callrouter/loadtest"
	"github.com/callrouter/callrouter/loadtest/probe"
	"github.com/rs/zerolog"
)

// writeTone writes a stereo 8 kHz 16-bit WAV of the given length: two legs of different tones.
func writeTone(t testing.TB, dir string, d time.Duration) string {
	t.Helper()
	n := int(d.Seconds() * 8000)
	ch := make([][]byte, 2)
	for c := range ch {
		ch[c] = make([]byte, 2*n)
		for i := 0; i < n; i++ {
			v := int16(6000 * math.Sin(2*math.Pi*float64(400*(c+1))*float64(i)/8000))
			binary.LittleEndian.PutUint16(ch[c][2*i:], uint16(v))
		}
	}
	path := filepath.Join(dir, "tone.wav")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := wav.Write(f, wav.FormatPCM, 8000, 16, ch); err != nil {
		t.Fatal(err)
	}
	return path
}

func testLog(t testing.TB) zerolog.Logger {
	if os.Getenv("CALLROUTER_TEST_LOG") != "" {
		return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
	}
	return zerolog.Nop()
}

// shortConfig is a test run: calls of a two-leg tone of the given length (none: no input yet),
// no frame may be lost, no progress lines.
func shortConfig(t *testing.T, mode, tenant string, calls int, ramp float64, tone time.Duration) loadtest.Config {
	cfg := loadtest.DefaultConfig()
	cfg.Mode, cfg.Tenant, cfg.Calls, cfg.Ramp = mode, tenant, calls, ramp
	if tone > 0 {
		cfg.Inputs = []string{writeTone(t, t.TempDir(), tone)}
	}
	cfg.MaxLoss = 0
	cfg.Progress = 0
	return cfg
}

// run runs cfg within a minute, failing the test if the run could not take place.
func run(t *testing.T, cfg loadtest.Config, d loadtest.Deps) *loadtest.Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rep, err := loadtest.Run(ctx, cfg, d)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// remoteStack starts a callrouter the tester is to treat as remote, its workers running
// processors, and waits until the router sees them; it stops when the test ends.
func remoteStack(t *testing.T, workers int, processors ...string) *stack.Stack {
	t.Helper()
	wc := worker.DefaultConfig()
	wc.Processors = processors
	st, err := stack.Start(stack.Config{Workers: workers, Worker: wc, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if err := waitWorkers(context.Background(), st, workers); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestReplayTwentyCallsNoLoss is the short replay of the issue: 20 two-leg calls of 10 s through
// the one-process stack in NATS mode, every frame accounted for and none lost.
func TestReplayTwentyCallsNoLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("10 s replay")
	}
	cfg := shortConfig(t, loadtest.ModeInproc, "lt-replay", 20, 200, 10*time.Second)
	cfg.MaxRefused = 0
	var progress bytes.Buffer
	cfg.Progress = 2 * time.Second
	rep := run(t, cfg, loadtest.Deps{Harness: Start, Log: testLog(t), Progress: &progress})
	var text bytes.Buffer
	rep.WriteText(&text)
	t.Log(text.String())
	if len(rep.Phases) != 1 {
		t.Fatalf("%d phases, want 1", len(rep.Phases))
	}
	p := rep.Phases[0]
	const wantFrames = 20 * 2 * 500
	if p.Completed != 20 || p.Totals.Sent != wantFrames || p.Totals.Received != wantFrames {
		t.Errorf("completed %d calls, sent %d, received %d frames; want 20, %d, %d", p.Completed, p.Totals.Sent, p.Totals.Received, wantFrames, wantFrames)
	}
	if p.Totals.Lost != 0 || p.Totals.Unaccounted != 0 || p.Totals.Duplicated != 0 || p.Totals.Reordered != 0 {
		t.Errorf("frames lost %d, unaccounted %d, duplicated %d, reordered %d; want none (worst legs %+v)", p.Totals.Lost,
			p.Totals.Unaccounted, p.Totals.Duplicated, p.Totals.Reordered, p.WorstLegs)
	}
	if p.Totals.Stops["end"] != 20 {
		t.Errorf("worker stops %v, want 20 × end", p.Totals.Stops)
	}
	if p.Latency.Count != wantFrames || p.Latency.P50 <= 0 || p.Latency.P99 < p.Latency.P50 || p.Latency.Max < p.Latency.P99 {
		t.Errorf("latency %+v: want %d samples, 0 < p50 <= p99 <= max", p.Latency, wantFrames)
	}
	if p.Setup.Count != 20 {
		t.Errorf("setup times %d, want 20", p.Setup.Count)
	}
	// The median wait may round to 0 µs on an idle machine; the tail of a 10 s run never does.
	if p.SchedWait[0] < 0 || p.SchedWait[1] <= 0 || p.SchedWait[1] < p.SchedWait[0] {
		t.Errorf("goroutine run wait p50/p99 %v ms: want 0 <= p50 <= p99, p99 > 0 (the whole stack's goroutines ran)", p.SchedWait)
	}
	if !rep.Checked || !rep.Pass {
		t.Errorf("verdict checked %v pass %v failures %v", rep.Checked, rep.Pass, rep.Failures)
	}
	if !bytes.Contains(progress.Bytes(), []byte("frames sent")) {
		t.Errorf("no progress line in %q", progress.String())
	}
	if _, err := json.Marshal(rep); err != nil {
		t.Fatal(err)
	}
}

// TestFloorPhase runs the baseline, the wildcard floor and callrouter: every frame of the floor
// (one wildcard subscription per subscriber connection) is received and timed, and the report
// gives callrouter's ratios to the floor next to those to the baseline.
func TestFloorPhase(t *testing.T) {
	if testing.Short() {
		t.Skip("three 2 s phases")
	}
	cfg := shortConfig(t, loadtest.ModeInproc, "lt-floor", 6, 100, 2*time.Second)
	cfg.Baseline, cfg.Floor = true, true
	rep := run(t, cfg, loadtest.Deps{Harness: Start, Log: testLog(t), StackLog: testLog(t)})
	var text bytes.Buffer
	rep.WriteText(&text)
	t.Log(text.String())
	if len(rep.Phases) != 3 || rep.Phases[1].Name != "floor" || rep.Ratio == nil || rep.Floor == nil || rep.Floor.P99 <= 0 {
		t.Fatalf("phases %d, ratio %v, floor ratio %v", len(rep.Phases), rep.Ratio, rep.Floor)
	}
	if len(rep.Rounds) != 1 || rep.Rounds[0].Floor == nil || rep.Rounds[0].FloorP99Ratio <= 0 {
		t.Errorf("rounds %+v: want the floor's percentiles and ratio", rep.Rounds)
	}
	f := rep.Phases[1]
	if f.Completed != cfg.Calls || f.Totals.Sent == 0 || f.Totals.Received != f.Totals.Sent || f.LossRatio != 0 || f.Latency.Count != f.Totals.Received {
		t.Errorf("floor: %d calls, sent %d, received %d, loss %v, %d latencies", f.Completed, f.Totals.Sent, f.Totals.Received, f.LossRatio, f.Latency.Count)
	}
	if !strings.Contains(text.String(), "callrouter / wildcard floor") {
		t.Error("the text report does not give the floor ratios")
	}
	if !rep.Pass {
		t.Errorf("failures: %v", rep.Failures)
	}
}

// TestBaselineAndRunTime runs two rounds of both phases with a run time shorter than the calls' replacement
// cycle: calls are replaced as they end and the ones still playing at the end are hung up, and
// every frame is still accounted for; the reports render.
func TestBaselineAndRunTime(t *testing.T) {
	if testing.Short() {
		t.Skip("two 3 s phases")
	}
	cfg := shortConfig(t, loadtest.ModeInproc, "lt-baseline", 6, 100, 2*time.Second)
	cfg.Baseline = true
	cfg.CallDuration = time.Second
	cfg.RunTime = 2500 * time.Millisecond
	cfg.Rounds = 2
	// No latency bar: a timed unit test on a shared machine proves nothing about speed.
	rep := run(t, cfg, loadtest.Deps{Harness: Start, Log: testLog(t), StackLog: testLog(t)})
	var text bytes.Buffer
	rep.WriteText(&text)
	t.Log(text.String())
	if len(rep.Phases) != 2 || rep.Phases[0].Name != "baseline" || rep.Phases[1].Name != "callrouter" || rep.Ratio == nil {
		t.Fatalf("phases %d, ratio %v", len(rep.Phases), rep.Ratio)
	}
	if len(rep.Rounds) != 2 || rep.Ratio.MedianRoundP99 <= 0 {
		t.Errorf("rounds %+v, median round p99 ratio %v; want 2 rounds and a ratio", rep.Rounds, rep.Ratio.MedianRoundP99)
	}
	if got, want := rep.Phases[1].Latency.Count, rep.Phases[1].Totals.Received; got != want {
		t.Errorf("merged latency count %d, want the %d frames received over both rounds", got, want)
	}
	for _, p := range rep.Phases {
		if p.Completed <= cfg.Calls || p.Totals.Sent == 0 || p.Totals.Received != p.Totals.Sent || p.LossRatio != 0 || p.Latency.Count == 0 {
			t.Errorf("%s: %d calls set up (want more than %d: replaced), sent %d, received %d, loss %v, %d latencies",
				p.Name, p.Completed, cfg.Calls, p.Totals.Sent, p.Totals.Received, p.LossRatio, p.Latency.Count)
		}
	}
	if !rep.Pass {
		t.Errorf("failures: %v", rep.Failures)
	}
	var js, page bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back loadtest.Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || len(back.Phases) != 2 {
		t.Fatalf("JSON round trip: %v", err)
	}
	if err := rep.WriteHTML(&page); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<svg", "polyline", "callrouter / baseline", "PASS"} {
		if !bytes.Contains(page.Bytes(), []byte(want)) {
			t.Errorf("HTML report lacks %q", want)
		}
	}
	if bytes.Contains(page.Bytes(), []byte("<script")) {
		t.Error("HTML report has a script")
	}
}

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
			st := remoteStack(t, 2, tc.processors...)
			cfg := shortConfig(t, loadtest.ModeInproc, "lt-remote", 5, 100, 2*time.Second)
			cfg.NATSURL = st.URL
			rep := run(t, cfg, loadtest.Deps{Harness: Start, Log: testLog(t)})
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

// TestBaselinePendingIsTheWorkers holds the baseline subscribers' pending limit to the workers'
// default, which the black-box client cannot import.
func TestBaselinePendingIsTheWorkers(t *testing.T) {
	if got, want := loadtest.BaselinePendingMsgs, worker.DefaultConfig().PendingMsgs; got != want {
		t.Errorf("loadtest.BaselinePendingMsgs %d, worker pending-msgs default %d: keep them equal", got, want)
	}
}

// TestIngestsSpreadCalls runs the callrouter phase through three in-process ingest nodes and the
// baseline and floor through three publishers: the calls go to every node in turn and every
// frame of every phase is accounted for.
// TestPublishConnsReachTheIngest runs the in-process stack's ingest with three publishing
// connections (-publish-conns 3): its own, for control, and two for frames. Its 6 calls fill
// only the first of those (ingest.CallsPerPublishConn), so the harness says one publisher; the test then claims three, as a run of 600 calls would,
// and the baseline publishes on three: every frame of both phases arrives and the report says so.
func TestPublishConnsReachTheIngest(t *testing.T) {
	if testing.Short() {
		t.Skip("two 2 s phases")
	}
	cfg := shortConfig(t, loadtest.ModeInproc, "lt-pubconns", 6, 100, 2*time.Second)
	cfg.Baseline, cfg.PublishConns = true, 3
	conns, publishers := 0, 0
	harness := func(ctx context.Context, lc loadtest.LocalConfig) (*loadtest.Local, error) {
		l, err := Start(ctx, lc)
		if err == nil {
			conns, publishers = l.Ingest.(*ingestTarget).nodes[0].PublishConns(), l.Publishers
			l.Publishers = 3
		}
		return l, err
	}
	rep := run(t, cfg, loadtest.Deps{Harness: harness, Log: testLog(t), StackLog: testLog(t)})
	if conns != 3 || publishers != 1 || !strings.Contains(rep.Config.Stack, "3 publishing connections") {
		t.Fatalf("the ingest has %d connections, %d in use, stack %q: want 3, 1 and 3 publishers", conns, publishers, rep.Config.Stack)
	}
	for _, p := range rep.Phases {
		if p.Completed != cfg.Calls || p.Totals.Sent == 0 || p.Totals.Received != p.Totals.Sent || p.LossRatio != 0 {
			t.Errorf("%s: %d calls, sent %d, received %d, loss %v", p.Name, p.Completed, p.Totals.Sent, p.Totals.Received, p.LossRatio)
		}
	}
	if !rep.Pass {
		t.Errorf("failures: %v", rep.Failures)
	}
}

func TestIngestsSpreadCalls(t *testing.T) {
	if testing.Short() {
		t.Skip("three 2 s phases")
	}
	cfg := shortConfig(t, loadtest.ModeInproc, "lt-ingests", 6, 100, 2*time.Second)
	cfg.Baseline, cfg.Floor, cfg.Ingests = true, true, 3
	var it *ingestTarget
	harness := func(ctx context.Context, lc loadtest.LocalConfig) (*loadtest.Local, error) {
		l, err := Start(ctx, lc)
		if err == nil {
			it = l.Ingest.(*ingestTarget)
		}
		return l, err
	}
	rep := run(t, cfg, loadtest.Deps{Harness: harness, Log: testLog(t), StackLog: testLog(t)})
	if it == nil || len(it.nodes) != 3 || it.next.Load() < uint32(cfg.Calls) {
		t.Fatalf("ingest target %+v: want 3 nodes taking %d calls in turn", it, cfg.Calls)
	}
	if len(rep.Phases) != 3 || !strings.Contains(rep.Config.Stack, "3 ingest nodes") {
		t.Fatalf("phases %d, stack %q", len(rep.Phases), rep.Config.Stack)
	}
	for _, p := range rep.Phases {
		if p.Completed != cfg.Calls || p.Totals.Sent == 0 || p.Totals.Received != p.Totals.Sent || p.LossRatio != 0 {
			t.Errorf("%s: %d calls, sent %d, received %d, loss %v", p.Name, p.Completed, p.Totals.Sent, p.Totals.Received, p.LossRatio)
		}
	}
	if !rep.Pass {
		t.Errorf("failures: %v", rep.Failures)
	}
}
