package audiohook

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/player"
	"github.com/coder/websocket"
)

// Environment of the load client process (see TestMain).
const (
	envLoadURL     = "AUDIOHOOK_LOAD_CLIENT_URL"
	envLoadCalls   = "AUDIOHOOK_LOAD_CLIENT_CALLS"
	envLoadSeconds = "AUDIOHOOK_LOAD_CLIENT_SECONDS"
)

func TestMain(m *testing.M) {
	if u := os.Getenv(envLoadURL); u != "" {
		os.Exit(loadClients(u))
	}
	os.Exit(m.Run())
}

// loadSession is one load client session: a signed upgrade and open, like the reference client.
func loadSession(ctx context.Context, wsURL string) (*websocket.Conn, string, error) {
	u, err := url.Parse(wsURL)
	if err != nil {
		return nil, "", err
	}
	id := newUUID()
	h := http.Header{}
	h.Set("Audiohook-Session-Id", id)
	org := newUUID()
	sign(h, u.Host, u.Path, signOpts{key: testKey, secret: testSecret, org: org})
	conn, _, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		return nil, "", err
	}
	open, _ := json.Marshal(map[string]any{"version": "2", "type": "open", "id": id, "seq": 1, "serverseq": 0, "position": "PT0S",
		"parameters": map[string]any{"organizationId": org, "conversationId": newUUID(), "participant": map[string]any{"id": newUUID()},
			"media": []any{stereoPCMU}}})
	if err := conn.Write(ctx, websocket.MessageText, open); err != nil {
		return nil, "", err
	}
	var m struct {
		Type string `json:"type"`
	}
	if _, b, err := conn.Read(ctx); err != nil || json.Unmarshal(b, &m) != nil || m.Type != "opened" {
		return nil, "", fmt.Errorf("no opened (%s): %v", m.Type, err)
	}
	return conn, id, nil
}

// loadClients is the client process of the load run: n sessions, each sending 200 ms stereo PCMU
// messages in real time (as Genesys does) for the given seconds, then close → closed.
func loadClients(wsURL string) int {
	n, _ := strconv.Atoi(os.Getenv(envLoadCalls))
	secs, _ := strconv.Atoi(os.Getenv(envLoadSeconds))
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs+60)*time.Second)
	defer cancel()
	conns := make([]*websocket.Conn, n)
	ids := make([]string, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 10)
	var failed sync.Map
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			c, id, err := loadSession(ctx, wsURL)
			if err != nil {
				failed.Store(i, err)
				fmt.Fprintln(os.Stderr, "session:", err)
				return
			}
			conns[i], ids[i] = c, id
		}()
	}
	wg.Wait()
	bad := 0
	failed.Range(func(any, any) bool { bad++; return true })
	if bad > 0 {
		return 1
	}
	fmt.Println("connected")
	msg := interleave(tone(1600, 0.3, 700), tone(1600, 0.3, 300))
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(200 * time.Millisecond)
			defer t.Stop()
			for k := 0; k < secs*5; k++ {
				<-t.C
				if c.Write(ctx, websocket.MessageBinary, msg) != nil {
					return
				}
			}
			closeMsg, _ := json.Marshal(map[string]any{"version": "2", "type": "close", "id": ids[i], "seq": 2, "serverseq": 1,
				"position": formatDuration(time.Duration(secs) * time.Second), "parameters": map[string]any{"reason": "end"}})
			_ = c.Write(ctx, websocket.MessageText, closeMsg)
			_, _, _ = c.Read(ctx)
			_ = c.Close(websocket.StatusNormalClosure, "")
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

// TestLoadCPUPerCall measures the CPU the callrouter process (AudioHook server, ingest, router,
// worker, embedded NATS) spends per call at 100 concurrent AudioHook sessions (stereo PCMU, 200 ms
// messages, clients in a child process) against the same 100 two-leg calls played into ingest
// by the file source. Run with CALLROUTER_AUDIOHOOK_LOAD=1.
func TestLoadCPUPerCall(t *testing.T) {
	if os.Getenv("CALLROUTER_AUDIOHOOK_LOAD") == "" {
		t.Skip("load run: set CALLROUTER_AUDIOHOOK_LOAD=1")
	}
	calls, _ := strconv.Atoi(os.Getenv("CALLROUTER_AUDIOHOOK_LOAD_CALLS"))
	if calls == 0 {
		calls = 100
	}
	const seconds, window = 25, 10 * time.Second
	cfg := testConfig(t)
	cfg.UpgradeRate = 0 // every session comes from one address
	base := func() time.Duration {
		e := startEnv(t, cfg, envOpts{workers: 1, capacity: 2 * calls})
		rec := &filesrc.Recording{Codec: frame.CodecPCMU, Rate: 8000, Frames: [][][]byte{splitFrames(tone(8000, 0.3, 700)), splitFrames(tone(8000, 0.3, 300))}}
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
		time.Sleep(2 * time.Second)
		c0, w0 := cpuTime(), time.Now()
		time.Sleep(window)
		cpu := time.Duration(float64(cpuTime()-c0) / time.Since(w0).Seconds())
		cancel()
		wg.Wait()
		return cpu
	}()

	e := startEnv(t, cfg, envOpts{workers: 1, capacity: 2 * calls})
	self, _ := os.Executable()
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = append(os.Environ(), envLoadURL+"="+e.url, envLoadCalls+"="+strconv.Itoa(calls), envLoadSeconds+"="+strconv.Itoa(seconds))
	cmd.Stderr = os.Stderr
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() || sc.Text() != "connected" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("load clients did not connect")
	}
	eventually(t, 10*time.Second, "the sessions", func() bool { return e.srv.Sessions() == calls })
	time.Sleep(2 * time.Second)
	f0 := totalFrames()
	c0, w0 := cpuTime(), time.Now()
	time.Sleep(window)
	ahCPU := time.Duration(float64(cpuTime()-c0) / time.Since(w0).Seconds())
	rate := float64(totalFrames()-f0) / time.Since(w0).Seconds()
	if rate < 0.95*float64(calls)*100 {
		t.Errorf("workers processed %.0f frames/s during the window, want %d", rate, calls*100)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("load clients: %v", err)
	}
	perCall := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) / float64(calls) }
	t.Logf("CPU per call at %d concurrent AudioHook sessions (ms of CPU per second of call): audiohook %.2f, file-source baseline %.2f; ratio %.2f; %.0f frames/s at the workers; whole process %.0f%% of a core",
		calls, perCall(ahCPU), perCall(base), float64(ahCPU)/float64(base), rate, float64(ahCPU)/float64(time.Second)*100)
}

func splitFrames(b []byte) [][]byte {
	var out [][]byte
	for i := 0; i+160 <= len(b); i += 160 {
		out = append(out, b[i:i+160])
	}
	return out
}

func totalFrames() int {
	processed.mu.Lock()
	defer processed.mu.Unlock()
	n := 0
	for _, f := range processed.calls {
		n += len(f)
	}
	return n
}

// TestSetupTimeFigures measures AudioHook setup over 50 sessions one after another: upgrade
// request → opened, and → the first frame at a worker. Run with CALLROUTER_AUDIOHOOK_LOAD=1.
func TestSetupTimeFigures(t *testing.T) {
	if os.Getenv("CALLROUTER_AUDIOHOOK_LOAD") == "" {
		t.Skip("figures run: set CALLROUTER_AUDIOHOOK_LOAD=1")
	}
	e := startEnv(t, testConfig(t), envOpts{workers: 1})
	msg := interleave(tone(160, 0.3, 700), tone(160, 0.3, 300))
	var opened, first []time.Duration
	for i := 0; i < 50; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		t0 := time.Now()
		c, id, err := loadSession(ctx, e.url)
		if err != nil {
			t.Fatal(err)
		}
		opened = append(opened, time.Since(t0))
		if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "the first frame", func() bool { return len(processed.frames(callFor(id))) > 0 })
		first = append(first, time.Since(t0))
		_ = c.CloseNow()
		cancel()
	}
	pct := func(d []time.Duration, p float64) time.Duration {
		s := slices.Clone(d)
		slices.Sort(s)
		return s[min(len(s)-1, int(p*float64(len(s))))].Round(100 * time.Microsecond)
	}
	t.Logf("AudioHook setup over %d sessions: upgrade → opened p50 %v p99 %v; upgrade → first frame at the worker p50 %v p99 %v",
		len(opened), pct(opened, 0.5), pct(opened, 0.99), pct(first, 0.5), pct(first, 0.99))
}
