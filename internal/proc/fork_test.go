package proc_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/audio"
	"github.com/callrouter/callrouter/internal/audiohook"
	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/peertest"
	"github.com/callrouter/callrouter/internal/player"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/wav"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/rs/zerolog"
)

// forkRec records, per tenant/call, the frames a worker processed.
var forkRec = struct {
	sync.Mutex
	frames map[string][]proc.Frame
	legs   map[string][]string
	ended  map[string]bool
}{frames: map[string][]proc.Frame{}, legs: map[string][]string{}, ended: map[string]bool{}}

type forkRecProc struct{}
type forkRecCall struct{ id string }

func init() {
	proc.Register("forkrec", func(proc.Options) (proc.Processor, error) { return forkRecProc{}, nil })
}

func (forkRecProc) Start(c proc.Call) (proc.Handler, error) {
	id := c.Spec().Tenant + "/" + c.Spec().Call
	forkRec.Lock()
	for _, l := range c.Spec().Legs {
		forkRec.legs[id] = append(forkRec.legs[id], l.Name)
	}
	forkRec.Unlock()
	return &forkRecCall{id}, nil
}
func (r *forkRecCall) Frame(f *proc.Frame) {
	forkRec.Lock()
	forkRec.frames[r.id] = append(forkRec.frames[r.id], proc.Frame{Header: f.Header, Payload: append([]byte(nil), f.Payload...)})
	forkRec.Unlock()
}
func (r *forkRecCall) Stop(string) {
	forkRec.Lock()
	forkRec.ended[r.id] = true
	forkRec.Unlock()
}

func toneMuLaw(n int, hz float64) [][]byte {
	var frames [][]byte
	b := make([]byte, n)
	for i := range b {
		b[i] = audio.EncodeMuLaw(int16(0.3 * 32767 * math.Sin(2*math.Pi*hz*float64(i)/8000)))
	}
	for i := 0; i+160 <= n; i += 160 {
		frames = append(frames, b[i:i+160])
	}
	return frames
}

// TestForkToAudioHook: a two-leg PCMU call of tenant acme, whose fork target is callrouter's own
// AudioHook server (key of tenant mirror), comes back as an AudioHook call of tenant mirror with
// both legs byte for byte.
func TestForkToAudioHook(t *testing.T) {
	secret := []byte("fork-test-secret-0123456789")
	const key = "Zm9yay10ZXN0LWtleS0x"
	cfg := audiohook.DefaultConfig()
	cfg.Keys = map[string]audiohook.Key{key: {Tenant: "mirror", Secret: secret}}
	ahSrv, err := audiohook.New(cfg, audiohook.Deps{Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	ahSrv.Mount(mux)
	hs := httptest.NewServer(mux)
	defer hs.Close()
	targets := filepath.Join(t.TempDir(), "targets")
	line := "acme ws" + strings.TrimPrefix(hs.URL, "http") + cfg.Path + " " + key + " " + base64.StdEncoding.EncodeToString(secret) + "\n"
	if err := os.WriteFile(targets, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	wc := worker.DefaultConfig()
	wc.Processors = []string{"accounting", "fork", "forkrec"}
	wc.ProcessorOptions = map[string]proc.Options{"fork": {"targets": targets}}
	wc.LagThreshold, wc.MaxFrameAge = time.Minute, time.Minute
	s, err := stack.Start(stack.Config{Worker: wc, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- ahSrv.Run(ctx, s.Ingest) }()
	defer func() { cancel(); <-ran }()
	<-ahSrv.Ready()
	deadline := time.Now().Add(10 * time.Second)
	for len(s.Routers[0].Workers()) != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}

	rec := &filesrc.Recording{Codec: frame.CodecPCMU, Rate: 8000, Frames: [][][]byte{toneMuLaw(8000*3/2, 440), toneMuLaw(8000*3/2, 300)}}
	spec := rec.Spec("acme", "forked-1", nil)
	if _, err := player.Play(context.Background(), s.Ingest, rec, spec, 0, 1); err != nil {
		t.Fatal(err)
	}
	var mirror string
	for time.Now().Before(deadline.Add(20 * time.Second)) {
		forkRec.Lock()
		for id, done := range forkRec.ended {
			if done && strings.HasPrefix(id, "mirror/") {
				mirror = id
			}
		}
		forkRec.Unlock()
		if mirror != "" {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if mirror == "" {
		t.Fatal("no forked call arrived through AudioHook")
	}
	forkRec.Lock()
	legs, frames := forkRec.legs[mirror], forkRec.frames[mirror]
	forkRec.Unlock()
	if strings.Join(legs, ",") != strings.Join([]string{spec.Legs[0].Name, spec.Legs[1].Name}, ",") {
		t.Fatalf("mirror legs %v, source legs %+v", legs, spec.Legs)
	}
	var got [2][]byte
	for _, f := range frames {
		if !f.Header.Has(frame.FlagLast) {
			got[f.Header.Leg] = append(got[f.Header.Leg], f.Payload...)
		}
	}
	for leg := range 2 {
		want := bytes.Join(rec.Frames[leg], nil)
		if !bytes.Equal(got[leg], want) {
			t.Fatalf("leg %d: %d bytes forked, want %d identical", leg, len(got[leg]), len(want))
		}
	}
}

// refServerDir holds the minimal AudioHook server on Genesys's reference library (MIT; see its
// README.md). Its dependencies: npm ci --prefix internal/audiohook/testdata/server --include=dev
const refServerDir = "../audiohook/testdata/server"

// TestForkToReferenceServer forks a two-leg PCMU call to the AudioHook server built on Genesys's
// reference library, which verifies the fork's signature (HTTP 401 otherwise), runs
// open/opened/close/closed and records what it receives: its session summary must be ok and its
// recording the call's two legs, byte for byte, as channels external and internal.
func TestForkToReferenceServer(t *testing.T) {
	if _, err := exec.LookPath("node"); err != nil {
		peertest.Missing(t, "node is not installed")
	}
	for _, d := range []string{"ts-node", "typescript", "ws", "uuid"} {
		if _, err := os.Stat(filepath.Join(refServerDir, "node_modules", d, "package.json")); err != nil {
			peertest.Missing(t, "the AudioHook reference server's dependencies are not installed (npm ci --prefix internal/audiohook/testdata/server --include=dev)")
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	const key, secretB64 = "Zm9yay1yZWYta2V5LTEyMzQ", "cmVmLXNlcnZlci1zZWNyZXQtMDEyMzQ1Njc4OQ=="
	recDir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node_modules/.bin/ts-node", "-P", "tsconfig.json", "src/minimal-server.ts", "--port", strconv.Itoa(port),
		"--auth", "request", "--select", "first", "--max-sessions", "1", "--record-dir", recDir, "--keys", `{"`+key+`":"`+secretB64+`"}`)
	cmd.Dir = refServerDir
	cmd.Env = append(os.Environ(), "TS_NODE_TRANSPILE_ONLY=1")
	cmd.WaitDelay = 5 * time.Second
	stdout, _ := cmd.StdoutPipe()
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = cmd.Wait() }()
	lines := make(chan string, 1000)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var out []string
	for listening := false; !listening; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("reference server exited: %s", errOut.String())
			}
			out = append(out, l)
			listening = strings.Contains(l, `"listening"`)
		case <-ctx.Done():
			t.Fatal("reference server did not start")
		}
	}
	targets := filepath.Join(t.TempDir(), "targets")
	if err := os.WriteFile(targets, []byte(fmt.Sprintf("acme ws://127.0.0.1:%d/api/v1/audiohook/ws %s %s\n", port, key, secretB64)), 0o600); err != nil {
		t.Fatal(err)
	}
	wc := worker.DefaultConfig()
	wc.Processors = []string{"accounting", "fork"}
	wc.ProcessorOptions = map[string]proc.Options{"fork": {"targets": targets}}
	s, err := stack.Start(stack.Config{Worker: wc, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	deadline := time.Now().Add(10 * time.Second)
	for len(s.Routers[0].Workers()) != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	rec := &filesrc.Recording{Codec: frame.CodecPCMU, Rate: 8000, Frames: [][][]byte{toneMuLaw(8000, 440), toneMuLaw(8000, 300)}}
	if _, err := player.Play(context.Background(), s.Ingest, rec, rec.Spec("acme", "forked-ref", nil), 0, 1); err != nil {
		t.Fatal(err)
	}
	// The server exits after its one session (--max-sessions 1); a fork that never got in leaves it
	// running.
	wait := time.After(30 * time.Second)
	for done := false; !done; {
		select {
		case l, ok := <-lines:
			out = append(out, l)
			done = !ok
		case <-wait:
			t.Fatalf("the reference server saw no complete session:\n%s\n%s", strings.Join(out, "\n"), errOut.String())
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("reference server: %v (exit 1: a session was not ok)\n%s\n%s", err, strings.Join(out, "\n"), errOut.String())
	}
	var summary string
	for _, l := range out {
		if strings.Contains(l, "session-summary") {
			summary = l
		}
	}
	if !strings.Contains(summary, `"ok":true`) || !strings.Contains(summary, `"VERIFIED"`) {
		t.Fatalf("session summary %s", summary)
	}
	files, _ := filepath.Glob(filepath.Join(recDir, "*.wav"))
	if len(files) != 1 {
		t.Fatalf("recordings %v", files)
	}
	a, err := wav.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	for leg := range 2 {
		if want := bytes.Join(rec.Frames[leg], nil); len(a.Channels) != 2 || !bytes.Equal(a.Channels[leg], want) {
			t.Fatalf("recorded channel %d differs from leg %d (%d channels)", leg, leg, len(a.Channels))
		}
	}
}
