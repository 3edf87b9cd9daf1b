package whip

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/player"
)

// Environment of the load client process (see TestMain).
const (
	envLoadURL     = "WHIP_LOAD_CLIENT_URL"
	envLoadCalls   = "WHIP_LOAD_CLIENT_CALLS"
	envLoadSeconds = "WHIP_LOAD_CLIENT_SECONDS"
)

func TestMain(m *testing.M) {
	if url := os.Getenv(envLoadURL); url != "" {
		os.Exit(loadClients(url))
	}
	os.Exit(m.Run())
}

// loadClients is the client process of the load run: it places n Opus calls, prints "connected"
// once all are up, streams for the given seconds, hangs up and exits.
func loadClients(url string) int {
	n, _ := strconv.Atoi(os.Getenv(envLoadCalls))
	secs, _ := strconv.Atoi(os.Getenv(envLoadSeconds))
	t := &testing.T{}
	packets := oggOpusPackets(t, "testdata/speech.opus")
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs+60)*time.Second)
	defer cancel()
	clients := make([]*client, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 10)
	failed := 0
	var mu sync.Mutex
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			c, err := dial(ctx, url, tokenAcme, "opus")
			if err != nil {
				mu.Lock()
				failed++
				mu.Unlock()
				fmt.Fprintln(os.Stderr, "dial:", err)
				return
			}
			clients[i] = c
		}()
	}
	wg.Wait()
	if failed > 0 {
		return 1
	}
	fmt.Println("connected")
	loop := make([][]byte, secs*50)
	for i := range loop {
		loop[i] = packets[i%len(packets)]
	}
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.send(ctx, loop)
			_, _ = c.hangup()
		}()
	}
	wg.Wait()
	return 0
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// startLoadClients starts the client process of a load run (this test binary, see TestMain) with
// calls Opus calls to url streaming for seconds, and returns once all are connected.
func startLoadClients(t testing.TB, url string, calls, seconds int) *exec.Cmd {
	t.Helper()
	self, _ := os.Executable()
	cmd := exec.Command(self, "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), envLoadURL+"="+url, envLoadCalls+"="+strconv.Itoa(calls), envLoadSeconds+"="+strconv.Itoa(seconds))
	cmd.Stderr = os.Stderr
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() || sc.Text() != "connected" {
		t.Fatalf("load clients did not connect")
	}
	return cmd
}

// BenchmarkMediaPathCPU measures the CPU the process spends per frame with 50 pion client calls
// (Opus, 20 ms packets, ICE + DTLS + SRTP over loopback; the clients in a child process) into
// the WHIP endpoint: the receive path (rx.go), the cutter and ingest's publish,
// plus the in-process NATS server, router and worker that take the frames (the same in every
// build, so a change to the media path shows as a difference, diluted by them), and the heap
// allocations per frame of all of it, which, unlike CPU time, a busy machine does not move, and the
// goroutines the process runs per call (the endpoint's, ingest's and the worker's). It runs one
// fixed window whatever b.N is: go test -run '^$' -bench MediaPathCPU -benchtime 1x ./internal/whip
func BenchmarkMediaPathCPU(b *testing.B) {
	const calls, seconds, window = 50, 16, 8 * time.Second
	e := startEnv(b, 1, testConfig())
	g0 := runtime.NumGoroutine()
	cmd := startLoadClients(b, e.url, calls, seconds)
	eventually(b, 10*time.Second, "sessions", func() bool { return e.whip.Sessions() == calls })
	time.Sleep(2 * time.Second) // settle
	b.ResetTimer()
	g1 := runtime.NumGoroutine()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	f0, c0, w0 := processed.total(), cpuTime(), time.Now()
	time.Sleep(window)
	cpu, frames := cpuTime()-c0, processed.total()-f0
	runtime.ReadMemStats(&m1)
	b.StopTimer()
	rate := float64(frames) / time.Since(w0).Seconds()
	if rate < 0.9*calls*50 {
		b.Errorf("workers processed %.0f frames/s during the window, want %d", rate, calls*50)
	}
	b.ReportMetric(float64(cpu.Microseconds())/float64(frames), "cpu-µs/frame")
	b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/float64(frames), "allocs/frame") // steadier than CPU on a shared machine
	b.ReportMetric(rate, "frames/s")
	b.ReportMetric(float64(g1-g0)/calls, "goroutines/call") // the endpoint's, ingest's and the worker's
	if err := cmd.Wait(); err != nil {
		b.Fatalf("load clients: %v", err)
	}
}

// TestLoadCPUPerCall measures the CPU the callrouter process (WHIP endpoint, ingest, router,
// worker, embedded NATS) spends per call at 100 concurrent pion client calls (clients in a child
// process), against a baseline measured in the same run: the same 100 calls of the same Opus
// frames played into ingest directly by the file source. Run with CALLROUTER_WHIP_LOAD=1.
func TestLoadCPUPerCall(t *testing.T) {
	if os.Getenv("CALLROUTER_WHIP_LOAD") == "" {
		t.Skip("load run: set CALLROUTER_WHIP_LOAD=1")
	}
	const calls, seconds, window = 100, 25, 10 * time.Second
	packets := oggOpusPackets(t, "testdata/speech.opus")

	// Baseline: the file source, no WebRTC.
	base := func() time.Duration {
		e := startEnv(t, 2, testConfig())
		rec := &filesrc.Recording{Codec: frame.CodecOpus, Rate: 48000, Frames: [][][]byte{packets}}
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for i := 0; i < calls; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = player.Play(ctx, e.stack.Ingest, rec, rec.Spec("acme", fmt.Sprintf("base-%d", i), nil), seconds*50, 1)
			}()
		}
		eventually(t, 20*time.Second, "baseline calls placed", func() bool { return len(e.stack.Ingest.Calls()) == calls })
		time.Sleep(2 * time.Second) // settle
		c0, w0 := cpuTime(), time.Now()
		time.Sleep(window)
		cpu := time.Duration(float64(cpuTime()-c0) / time.Since(w0).Seconds())
		cancel()
		wg.Wait()
		return cpu
	}()

	e := startEnv(t, 2, testConfig())
	cmd := startLoadClients(t, e.url, calls, seconds)
	eventually(t, 10*time.Second, "100 sessions", func() bool { return e.whip.Sessions() == calls })
	time.Sleep(2 * time.Second)
	f0, c0, w0 := processed.total(), cpuTime(), time.Now()
	time.Sleep(window)
	whipCPU := time.Duration(float64(cpuTime()-c0) / time.Since(w0).Seconds())
	rate := float64(processed.total()-f0) / time.Since(w0).Seconds()
	if rate < 0.95*calls*50 {
		t.Errorf("workers processed %.0f frames/s during the window, want %d", rate, calls*50)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("load clients: %v", err)
	}
	clientCPU := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	perCall := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) / calls }
	t.Logf("CPU per call at %d concurrent calls (ms of CPU per second of call): whip %.2f (%.2f%% of a core), file-source baseline %.2f; ratio %.2f; %.0f frames/s at the workers; whole process whip %.0f%% of a core; clients process %.1f s CPU in total",
		calls, perCall(whipCPU), perCall(whipCPU)/10, perCall(base), float64(whipCPU)/float64(base), rate, float64(whipCPU)/float64(time.Second)*100, clientCPU.Seconds())
}

// TestSetupTimeFigures measures WHIP setup time, POST → first frame at a worker, over 50
// sessions placed one after another. Run with CALLROUTER_WHIP_LOAD=1.
func TestSetupTimeFigures(t *testing.T) {
	if os.Getenv("CALLROUTER_WHIP_LOAD") == "" {
		t.Skip("figures run: set CALLROUTER_WHIP_LOAD=1")
	}
	e := startEnv(t, 2, testConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	packets := oggOpusPackets(t, "testdata/speech.opus")
	var setup, answer []time.Duration
	for i := 0; i < 50; i++ {
		c, err := dial(ctx, e.url, tokenAcme, "opus")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			for j := 0; ; j++ {
				select {
				case <-ctx.Done():
					return
				default:
				}
				if len(processed.frames(c.call)) > 0 {
					return
				}
				_ = c.send(ctx, packets[j%len(packets):j%len(packets)+1])
			}
		}()
		<-done
		f := processed.frames(c.call)
		if len(f) == 0 {
			t.Fatal("no frame")
		}
		setup = append(setup, f[0].at.Sub(c.posted))
		answer = append(answer, c.answered.Sub(c.posted))
		_, _ = c.hangup()
	}
	pct := func(d []time.Duration, p float64) time.Duration {
		s := slices.Clone(d)
		slices.Sort(s)
		return s[min(len(s)-1, int(p*float64(len(s))))]
	}
	t.Logf("WHIP setup over %d sessions: POST → first frame at worker p50 %v p99 %v max %v; POST → 201 answer p50 %v p99 %v",
		len(setup), pct(setup, 0.5).Round(time.Microsecond*100), pct(setup, 0.99).Round(time.Microsecond*100), pct(setup, 1).Round(time.Microsecond*100),
		pct(answer, 0.5).Round(time.Microsecond*100), pct(answer, 0.99).Round(time.Microsecond*100))
}
