package proc_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
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
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/natsauth"
	"github.com/callrouter/callrouter/internal/peertest"
	"github.com/callrouter/callrouter/internal/player"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/twilio"
	"github.com/callrouter/callrouter/internal/wav"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
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

// TestForkToTwilio: the same call forked in the Twilio Media Streams shape to callrouter's own
// Media Streams server (token of tenant mirror) comes back as a Twilio call of tenant mirror with
// both legs byte for byte.
func TestForkToTwilio(t *testing.T) {
	tcfg := twilio.DefaultConfig()
	tcfg.Tokens = map[string]string{"fork-mirror-token-0123456789": "mirror"}
	tcfg.ReorderWindow = 500 * time.Millisecond // a loaded (-race) machine never releases half a pair
	twSrv, err := twilio.New(tcfg, twilio.Deps{Log: zerolog.Nop(), Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	twSrv.Mount(mux)
	hs := httptest.NewServer(mux)
	defer hs.Close()
	targets := filepath.Join(t.TempDir(), "targets")
	line := "acme twilio ws" + strings.TrimPrefix(hs.URL, "http") + tcfg.Path + " fork-mirror-token-0123456789\n"
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
	go func() { ran <- twSrv.Run(ctx, s.Ingest) }()
	defer func() { cancel(); <-ran }()
	<-twSrv.Ready()
	deadline := time.Now().Add(10 * time.Second)
	for len(s.Routers[0].Workers()) != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	rec := &filesrc.Recording{Codec: frame.CodecPCMU, Rate: 8000, Frames: [][][]byte{toneMuLaw(8000*3/2, 440), toneMuLaw(8000*3/2, 300)}}
	spec := rec.Spec("acme", "forked-tw", nil)
	if _, err := player.Play(context.Background(), s.Ingest, rec, spec, 0, 1); err != nil {
		t.Fatal(err)
	}
	var mirror string
	for time.Now().Before(deadline.Add(20 * time.Second)) {
		forkRec.Lock()
		for id, done := range forkRec.ended {
			if done && strings.HasPrefix(id, "mirror/tw-") {
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
		t.Fatal("no forked call arrived through Media Streams")
	}
	forkRec.Lock()
	legs, frames := forkRec.legs[mirror], forkRec.frames[mirror]
	forkRec.Unlock()
	if strings.Join(legs, ",") != "caller,agent" {
		t.Fatalf("mirror legs %v", legs)
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

const refKey, refSecretB64 = "Zm9yay1yZWYta2V5LTEyMzQ", "cmVmLXNlcnZlci1zZWNyZXQtMDEyMzQ1Njc4OQ=="

// refServer is the reference-library server, running with its JSON log read into lines.
type refServer struct {
	cmd    *exec.Cmd
	port   int
	recDir string
	lines  chan string
	out    []string // lines read so far
	mu     sync.Mutex
	errOut bytes.Buffer // guarded by mu
}

func (r *refServer) Write(b []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.errOut.Write(b)
}

func (r *refServer) stderr() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.errOut.String()
}

// startRefServer starts the server (exiting after sessions sessions) with extra options and
// waits until it listens; the test's cleanup stops it.
func startRefServer(t *testing.T, sessions int, extra ...string) *refServer {
	t.Helper()
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
	r := &refServer{port: l.Addr().(*net.TCPAddr).Port, recDir: t.TempDir(), lines: make(chan string, 1000)}
	_ = l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	args := append([]string{"-P", "tsconfig.json", "src/minimal-server.ts", "--port", strconv.Itoa(r.port),
		"--auth", "request", "--select", "first", "--max-sessions", strconv.Itoa(sessions), "--record-dir", r.recDir,
		"--keys", `{"` + refKey + `":"` + refSecretB64 + `"}`}, extra...)
	r.cmd = exec.CommandContext(ctx, "node_modules/.bin/ts-node", args...)
	r.cmd.Dir = refServerDir
	r.cmd.Env = append(os.Environ(), "TS_NODE_TRANSPILE_ONLY=1")
	r.cmd.WaitDelay = 5 * time.Second
	stdout, _ := r.cmd.StdoutPipe()
	r.cmd.Stderr = r
	if err := r.cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = r.cmd.Wait() })
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			r.lines <- sc.Text()
		}
		close(r.lines)
	}()
	for listening := false; !listening; {
		select {
		case l, ok := <-r.lines:
			if !ok {
				t.Fatalf("reference server exited: %s", r.stderr())
			}
			r.out = append(r.out, l)
			listening = strings.Contains(l, `"listening"`)
		case <-ctx.Done():
			t.Fatal("reference server did not start")
		}
	}
	return r
}

// targets writes a fork targets file pointing tenant acme at the server.
func (r *refServer) targets(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "targets")
	if err := os.WriteFile(p, []byte(fmt.Sprintf("acme ws://127.0.0.1:%d/api/v1/audiohook/ws %s %s\n", r.port, refKey, refSecretB64)), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// wait waits for the server to exit after its sessions (0 if every one was ok).
func (r *refServer) wait(t *testing.T, within time.Duration) {
	t.Helper()
	timeout := time.After(within)
	for done := false; !done; {
		select {
		case l, ok := <-r.lines:
			if ok {
				r.out = append(r.out, l)
			}
			done = !ok
		case <-timeout:
			t.Fatalf("the reference server did not see its sessions complete:\n%s\n%s", strings.Join(r.out, "\n"), r.stderr())
		}
	}
	if err := r.cmd.Wait(); err != nil {
		t.Fatalf("reference server: %v (exit 1: a session was not ok)\n%s\n%s", err, strings.Join(r.out, "\n"), r.stderr())
	}
}

// refLine is the part of the server's JSON log lines the tests read.
type refLine struct {
	Event   string `json:"event"`
	Session string `json:"session"`
	Message struct {
		Type       string          `json:"type"`
		Position   string          `json:"position"`
		Parameters json.RawMessage `json:"parameters"`
	} `json:"message"`
	Summary struct {
		OK   bool   `json:"ok"`
		Auth string `json:"auth"`
	} `json:"summary"`
}

func (r *refServer) parsed(t *testing.T) []refLine {
	var out []refLine
	for _, l := range r.out {
		var rl refLine
		if json.Unmarshal([]byte(l), &rl) != nil {
			t.Fatalf("reference server log line %q", l)
		}
		out = append(out, rl)
	}
	return out
}

// TestForkToReferenceServer forks a two-leg PCMU call to the AudioHook server built on Genesys's
// reference library, which verifies the fork's signature (HTTP 401 otherwise), runs
// open/opened/close/closed and records what it receives: its session summary must be ok and its
// recording the call's two legs, byte for byte, as channels external and internal. The server
// sends three transcript events after opened: each arrives on NATS as a fork.event, with
// permissions on, read by the tenant's own identity.
func TestForkToReferenceServer(t *testing.T) {
	r := startRefServer(t, 1, "--events", "3")
	wc := worker.DefaultConfig()
	wc.Processors = []string{"accounting", "fork"}
	wc.ProcessorOptions = map[string]proc.Options{"fork": {"targets": r.targets(t)}}
	// With NATS permissions on (as in production): the worker may publish the events and the
	// tenant, as its own identity, read them.
	set, err := natsauth.NewSet(natsauth.Local([]string{wc.Pool}, "acme"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := stack.Start(stack.Config{Worker: wc, Log: zerolog.Nop(), Auth: set})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	nc, err := s.Connect(natsauth.RoleTenant, "", "acme")
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan *nats.Msg, 100)
	sub, err := nc.ChanSubscribe(subjects.Event("acme", "forked-ref", proc.ForkEventKind), events)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	_ = nc.Flush()
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
	r.wait(t, 30*time.Second)
	var session string
	for _, l := range r.parsed(t) {
		if l.Event == "session-summary" {
			if !l.Summary.OK || l.Summary.Auth != "VERIFIED" {
				t.Fatalf("session summary %+v", l.Summary)
			}
			session = l.Session
		}
	}
	files, _ := filepath.Glob(filepath.Join(r.recDir, "*.wav"))
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
	timeout := time.After(10 * time.Second)
	for i := 1; i <= 3; i++ {
		select {
		case m := <-events:
			var ev wire.Event
			var data struct {
				Session string `json:"session"`
				Type    string `json:"type"`
				Data    struct {
					Alternatives []struct {
						Interpretations []struct {
							Transcript string `json:"transcript"`
						} `json:"interpretations"`
					} `json:"alternatives"`
				} `json:"data"`
			}
			if err := json.Unmarshal(m.Data, &ev); err != nil || ev.Kind != proc.ForkEventKind || json.Unmarshal(ev.Data, &data) != nil {
				t.Fatalf("fork event %s", m.Data)
			}
			if data.Session != session || data.Type != "transcript" || len(data.Data.Alternatives) != 1 ||
				data.Data.Alternatives[0].Interpretations[0].Transcript != fmt.Sprintf("test transcript %d", i) {
				t.Fatalf("fork event %d: %s (session %s)", i, ev.Data, session)
			}
		case <-timeout:
			t.Fatalf("%d of 3 receiver events arrived as %s events", i-1, proc.ForkEventKind)
		}
	}
}

// forkFrames returns n frames of one leg whose bytes differ from frame to frame, so that audio
// put at a wrong position cannot pass for the right audio.
func forkFrames(leg, n int) [][]byte {
	r := rand.New(rand.NewPCG(uint64(leg)+1, 7))
	out := make([][]byte, n)
	for i := range out {
		out[i] = make([]byte, 160)
		for k := range out[i] {
			out[i][k] = byte(r.Uint32())
		}
	}
	return out
}

// TestForkMigratedCallWithoutGap: a fork delivers a migrated call to its receiver without a
// gap. A two-leg call forked to the reference-library server is drained off its worker
// mid-call (make-before-break, as on SIGTERM); the fork moves with the call and the second
// worker continues it in a new AudioHook session (continuedSessions naming the first, the same
// conversationId, open at the position where it takes over). Laid at their positions, the two
// sessions' recordings must be the call's audio, both channels, byte for byte, nothing missing,
// nothing twice unless identical, and no `discarded`.
func TestForkMigratedCallWithoutGap(t *testing.T) {
	r := startRefServer(t, 2)
	wc := worker.DefaultConfig()
	wc.Processors = []string{"accounting", "fork"}
	wc.ProcessorOptions = map[string]proc.Options{"fork": {"targets": r.targets(t)}}
	wc.LagThreshold, wc.MaxFrameAge = time.Minute, time.Minute // a loaded machine is not the subject
	s, err := stack.Start(stack.Config{Workers: 2, Worker: wc, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	deadline := time.Now().Add(10 * time.Second)
	for len(s.Routers[0].Workers()) != 2 {
		if time.Now().After(deadline) {
			t.Fatal("two workers never visible to the router")
		}
		time.Sleep(10 * time.Millisecond)
	}
	const drainAt = 75 // drained after 1.5 s
	legs := [][][]byte{forkFrames(0, forkMaxFrames), forkFrames(1, forkMaxFrames)}
	rec := &filesrc.Recording{Codec: frame.CodecPCMU, Rate: 8000, Frames: legs}
	c, err := s.Ingest.StartCall(t.Context(), rec.Spec("acme", "forked-moved", nil))
	if err != nil {
		t.Fatal(err)
	}
	first := c.Placements()[0].Worker
	legs = playUntilMoved(t, c, legs, drainAt, first, func() {
		for k, w := range s.Workers {
			if fmt.Sprintf("worker-%d", k+1) == first {
				s.Stop(w) // drains: every call handed over make-before-break
			}
		}
	})
	c.End("hangup")
	r.wait(t, 30*time.Second)
	second, overlap := checkStitched(t, r, legs)
	if overlap != 0 {
		t.Errorf("%d samples sent twice across a make-before-break hand-over, want 0", overlap)
	}
	t.Logf("drained at frame %d; the second session opened at %.3f s", drainAt, float64(second)/8000)
}

// checkStitched reads the reference server's log and recordings of a call forked in two
// sessions and checks that the second continues the first (continuedSessions, conversationId,
// a position past 0), nothing was discarded, and that, laid at their positions with the first
// copy of a position kept, the recordings are the call's legs byte for byte; where both carry a
// position the second's copy is the same or silence. It returns where the second
// session opened (samples) and the samples both sessions carried.
func checkStitched(t *testing.T, r *refServer, legs [][][]byte) (second, overlap int) {
	t.Helper()
	n := len(legs[0])
	type sess struct {
		id, conv, cont string
		pos            int // samples
		discarded      int
	}
	var order []*sess
	byID := map[string]*sess{}
	for _, l := range r.parsed(t) {
		if l.Event != "client-message" {
			continue
		}
		switch l.Message.Type {
		case "open":
			var p struct {
				ConversationID string `json:"conversationId"`
				Continued      []struct {
					ID string `json:"id"`
				} `json:"continuedSessions"`
			}
			if err := json.Unmarshal(l.Message.Parameters, &p); err != nil {
				t.Fatal(err)
			}
			ss := &sess{id: l.Session, conv: p.ConversationID, pos: refSamples(t, l.Message.Position)}
			if len(p.Continued) == 1 {
				ss.cont = p.Continued[0].ID
			}
			order = append(order, ss)
			byID[l.Session] = ss
		case "discarded":
			byID[l.Session].discarded++
		}
	}
	if len(order) != 2 {
		t.Fatalf("%d sessions, want 2 (one per worker)", len(order))
	}
	a, b := order[0], order[1]
	if a.pos != 0 || a.cont != "" || b.cont != a.id || b.conv != a.conv || b.pos <= 0 || a.discarded+b.discarded != 0 {
		t.Fatalf("sessions %+v then %+v: want the second to continue the first (continuedSessions, conversationId) at its position, nothing discarded", *a, *b)
	}
	total := n * 160
	var got [2][]byte
	var have [2][]bool
	for ch := range 2 {
		got[ch], have[ch] = make([]byte, total), make([]bool, total)
	}
	for _, ss := range order {
		w, err := wav.ReadFile(filepath.Join(r.recDir, ss.id+".wav"))
		if err != nil {
			t.Fatal(err)
		}
		if len(w.Channels) != 2 {
			t.Fatalf("session %s recorded %d channels", ss.id, len(w.Channels))
		}
		for ch := range 2 {
			for i, v := range w.Channels[ch] {
				at := ss.pos + i
				switch {
				case at >= total:
					t.Fatalf("session %s channel %d: audio at sample %d, past the call's %d", ss.id, ch, at, total)
				case have[ch][at] && got[ch][at] != v && v != 0xff:
					t.Fatalf("channel %d sample %d: the sessions disagree", ch, at)
				case have[ch][at]:
					// Both carried it: the receiver keeps the first copy. The second may differ
					// only by silence, on a leg that it resumed a frame or so after the other.
					overlap++
					continue
				}
				got[ch][at], have[ch][at] = v, true
			}
		}
	}
	for ch := range 2 {
		want := bytes.Join(legs[ch], nil)
		for i := range total {
			if !have[ch][i] || got[ch][i] != want[i] {
				t.Fatalf("channel %d: sample %d (%.3f s) missing or wrong (have %v, %#x, want %#x); the second session opened at %.3f s",
					ch, i, float64(i)/8000, have[ch][i], got[ch][i], want[i], float64(b.pos)/8000)
			}
		}
	}
	return b.pos, overlap / 2
}

// forkMaxFrames bounds the calls of the migration tests: 20 s.
const forkMaxFrames = 1000

// playUntilMoved sends the legs' frames at real time, calls move after frame at, and goes on
// until the call has been placed away from the worker from for a second (50 frames); it returns
// the frames sent.
func playUntilMoved(t *testing.T, c *ingest.Call, legs [][][]byte, at int, from string, move func()) [][][]byte {
	t.Helper()
	tk := time.NewTicker(frame.Duration)
	defer tk.Stop()
	movedAt := -1
	for i := range len(legs[0]) {
		<-tk.C
		for leg := range legs {
			if err := c.Send(leg, legs[leg][i], 0); err != nil {
				t.Fatal(err)
			}
		}
		if i == at {
			move()
		}
		if p := c.Placements(); movedAt < 0 && i > at && len(p) == 1 && p[0].Worker != from {
			movedAt = i
		}
		if movedAt >= 0 && i >= movedAt+50 {
			out := make([][][]byte, len(legs))
			for leg := range legs {
				out[leg] = legs[leg][:i+1]
			}
			return out
		}
	}
	t.Fatalf("the call was not placed away from %s within %d frames", from, len(legs[0]))
	return nil
}

// refSamples turns an AudioHook position (PT<seconds>S) into samples at 8 kHz.
func refSamples(t *testing.T, pos string) int {
	t.Helper()
	sec, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimPrefix(pos, "PT"), "S"), 64)
	if err != nil {
		t.Fatalf("position %q: %v", pos, err)
	}
	return int(math.Round(sec * 8000))
}

// TestForkFailedOverCallWithoutGap: the worker holding a forked call dies mid-call (its NATS
// connection closed without a word; it stops its calls, so its fork closes its session). The
// call fails over to another worker, which replays from the dead worker's last reported progress:
// its fork continues the call in a second session that starts before the end of what the first
// delivered. Laid at their positions, keeping the first copy of each (as docs/processors.md asks
// of a receiver), the two recordings are the call byte for byte.
func TestForkFailedOverCallWithoutGap(t *testing.T) {
	r := startRefServer(t, 2)
	wc := worker.DefaultConfig()
	wc.Processors = []string{"accounting", "fork"}
	wc.ProcessorOptions = map[string]proc.Options{"fork": {"targets": r.targets(t)}}
	wc.LagThreshold, wc.MaxFrameAge = time.Minute, time.Minute // a loaded machine is not the subject
	idle := wc
	idle.Tenants = []string{"nobody"} // the stack's own worker takes no acme call
	s, err := stack.Start(stack.Config{Workers: 1, Worker: idle, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	vnc, err := nats.Connect(s.URL) // the victim's own connection, so it can die without a word
	if err != nil {
		t.Fatal(err)
	}
	defer vnc.Close()
	vc := wc
	vc.ID = "victim"
	victim, err := worker.New(vc, worker.Deps{NC: vnc, Log: zerolog.Nop(), Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	vctx, vcancel := context.WithCancel(context.Background())
	defer vcancel()
	vdone := make(chan error, 1)
	go func() { vdone <- victim.Run(vctx) }()
	defer func() { vcancel(); <-vdone; victim.Close() }()
	workersSeen := func(n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for len(s.Routers[0].Workers()) != n {
			if time.Now().After(deadline) {
				t.Fatalf("%d workers never visible to the router", n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	workersSeen(2)
	const killAt = 75 // the victim dies after 1.5 s
	legs := [][][]byte{forkFrames(0, forkMaxFrames), forkFrames(1, forkMaxFrames)}
	rec := &filesrc.Recording{Codec: frame.CodecPCMU, Rate: 8000, Frames: legs}
	c, err := s.Ingest.StartCall(t.Context(), rec.Spec("acme", "forked-failover", nil))
	if err != nil {
		t.Fatal(err)
	}
	if p := c.Placements(); len(p) != 1 || p[0].Worker != "victim" {
		t.Fatalf("placed on %v, want the victim", p)
	}
	legs = playUntilMoved(t, c, legs, killAt, "victim", func() {
		if _, err := s.AddWorker("worker-2", wc); err != nil {
			t.Fatal(err)
		}
		vnc.Close()
		victim.Close()
	})
	c.End("hangup")
	r.wait(t, 30*time.Second)
	second, overlap := checkStitched(t, r, legs)
	t.Logf("the victim died at frame %d; the second session opened at %.3f s; %d samples a channel carried by both", killAt, float64(second)/8000, overlap)
}
