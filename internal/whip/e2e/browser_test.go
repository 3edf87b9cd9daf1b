package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/whip"
	"github.com/callrouter/callrouter/internal/whip/web"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/rs/zerolog"
)

// innerEnv marks the test process that runs inside the private network namespace.
const innerEnv = "CALLROUTER_E2E_NETNS"

// TestBrowserCall re-runs itself inside `unshare -n` (loopback only) where it starts a
// one-process callrouter with the WHIP endpoint and the call page, and drives Chromium through a
// call. It skips only when chromium or node is not installed.
func TestBrowserCall(t *testing.T) {
	if os.Getenv(innerEnv) != "" {
		browserCall(t)
		return
	}
	chromium, errC := exec.LookPath("chromium")
	node, errN := exec.LookPath("node")
	if errC != nil || errN != nil {
		t.Skipf("skipping the browser test: chromium (%v) and node (%v) are needed; apt-get install chromium nodejs npm", errC, errN)
	}
	if _, err := os.Stat("node_modules/playwright-core"); err != nil {
		npm, err := exec.LookPath("npm")
		if err != nil {
			t.Fatalf("playwright-core is not installed and npm is missing: run `npm ci --prefix internal/whip/e2e`")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if out, err := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund").CombinedOutput(); err != nil {
			t.Fatalf("npm ci (playwright-core): %v\n%s", err, out)
		}
	}
	for _, tool := range []string{"unshare", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed to run the browser in a private network namespace: %v", tool, err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	shot := artifactPath(t, "whip-call-page.png")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "-n", "sh", "-c", `ip link set lo up && exec "$0" -test.run '^TestBrowserCall$' -test.v -test.count=1`, self)
	cmd.Env = append(os.Environ(), innerEnv+"=1", "CALLROUTER_E2E_SHOT="+shot, "CHROMIUM="+chromium, "NODE="+node)
	out, err := cmd.CombinedOutput()
	t.Logf("inside unshare -n:\n%s", out)
	if err != nil {
		t.Fatalf("browser call inside the private network namespace failed: %v", err)
	}
	if !bytes.Contains(out, []byte("--- PASS: TestBrowserCall")) {
		t.Fatal("the inner test did not pass")
	}
	t.Logf("screenshot: %s", shot)
}

// artifactPath returns where to save a test artifact: $CALLROUTER_ARTIFACTS, or out/artifacts at
// the module root.
func artifactPath(t *testing.T, name string) string {
	dir := os.Getenv("CALLROUTER_ARTIFACTS")
	if dir == "" {
		wd, _ := os.Getwd()
		for d := wd; d != filepath.Dir(d); d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
				dir = filepath.Join(d, "out", "artifacts")
				break
			}
		}
	}
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p, _ := filepath.Abs(filepath.Join(dir, name))
	return p
}

type pageReport struct {
	State  string `json:"state"`
	Events []struct {
		Kind, Source, Text string
	} `json:"events"`
	PacketsSent int `json:"packetsSent"`
}

func browserCall(t *testing.T) {
	if ifs, _ := net.Interfaces(); len(ifs) != 1 || ifs[0].Flags&net.FlagLoopback == 0 {
		t.Fatalf("not in a loopback-only network namespace: %v", ifs)
	}
	log := zerolog.Nop()
	if os.Getenv("CALLROUTER_TEST_LOG") != "" {
		log = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
	}
	wc := worker.DefaultConfig()
	wc.Processors = []string{"accounting"}
	s, err := stack.Start(stack.Config{Workers: 1, Worker: wc, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cfg := whip.DefaultConfig()
	cfg.UDPAddr = "127.0.0.1:0"
	cfg.OpenTenant = "demo"
	w, err := whip.New(cfg, whip.Deps{Log: log, Registry: s.Registry()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- w.Run(ctx, s.Ingest) }()
	defer func() {
		cancel()
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}()
	<-w.Ready()
	mux := http.NewServeMux()
	w.Mount(mux)
	mux.Handle("/call/", http.StripPrefix("/call", web.Handler()))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	defer srv.Close()
	deadline := time.Now().Add(10 * time.Second)
	for len(s.Routers[0].Workers()) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}

	wavPath, _ := filepath.Abs("../testdata/speech-16k.wav")
	shot := os.Getenv("CALLROUTER_E2E_SHOT")
	nctx, ncancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer ncancel()
	node := os.Getenv("NODE")
	if node == "" {
		node = "node"
	}
	cmd := exec.CommandContext(nctx, node, "call.mjs", "http://"+ln.Addr().String()+"/call/", wavPath, shot, "3000")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		errors.As(err, &ee)
		t.Fatalf("call.mjs: %v\n%s", err, stderr.String())
	}
	var rep pageReport
	if err := json.Unmarshal(bytes.TrimSpace(out), &rep); err != nil {
		t.Fatalf("call.mjs output %q: %v", out, err)
	}
	kinds := map[string]string{}
	for _, e := range rep.Events {
		kinds[e.Kind] = e.Text
		t.Logf("page event %-10s %s", e.Kind, e.Text)
	}
	for _, k := range []string{"start", "state", "end", "accounting", "media"} {
		if _, ok := kinds[k]; !ok {
			t.Errorf("the page shows no %q event", k)
		}
	}
	acc := kinds["accounting"]
	if !strings.Contains(acc, "worker/") || strings.Contains(acc, `"processed":0`) || !strings.Contains(acc, `"lost":0`) {
		t.Errorf("accounting event on the page: %s", acc)
	}
	if rep.PacketsSent < 100 || !strings.HasPrefix(rep.State, "ended") {
		t.Errorf("page state %q, %d packets sent", rep.State, rep.PacketsSent)
	}
	if _, err := os.Stat(shot); err != nil {
		t.Errorf("screenshot: %v", err)
	}
}
