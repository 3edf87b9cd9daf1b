package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/natsauth"
	"github.com/callrouter/callrouter/internal/peertest"
	"github.com/callrouter/callrouter/internal/player"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/wav"
	"github.com/callrouter/callrouter/internal/whip"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/rs/zerolog"
)

const innerCallPageEnv = "CALLROUTER_E2E_CALLPAGE_NETNS"

// TestCallPageTimeline re-runs itself inside `unshare -n`, where it starts a one-process
// callrouter (embedded NATS with per-role permissions, router, ingest, a worker running
// accounting, speech, dtmf, levels with meter_ms, summary) with the call page on its public listener, opens the page in headless
// Chromium watching a call id, then plays that call from a file: two legs with the same speech
// 1.5 s apart (so they overlap) and a DTMF 7 on the caller's leg. The page must draw both legs'
// speech segments where the speech is, the overtalk, the digit at its time, meters that move,
// and at the end the accounting with 0 frames lost. The screenshot goes to
// out/artifacts/call-page.png on every run.
func TestCallPageTimeline(t *testing.T) {
	if os.Getenv(innerCallPageEnv) != "" {
		callPageTimeline(t)
		return
	}
	chromium, errC := exec.LookPath("chromium")
	node, errN := exec.LookPath("node")
	if errC != nil || errN != nil {
		peertest.Missing(t, fmt.Sprintf("the call page test needs chromium (%v) and node (%v): apt-get install chromium nodejs npm", errC, errN))
	}
	ensurePlaywright(t)
	for _, tool := range []string{"unshare", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed to run the browser in a private network namespace: %v", tool, err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	shot := artifactPath(t, "call-page.png")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "-n", "sh", "-c", `ip link set lo up && exec "$0" -test.run '^TestCallPageTimeline$' -test.v -test.count=1`, self)
	cmd.Env = append(os.Environ(), innerCallPageEnv+"=1", "CALLROUTER_E2E_SHOT="+shot, "CHROMIUM="+chromium, "NODE="+node)
	out, err := cmd.CombinedOutput()
	t.Logf("inside unshare -n:\n%s", out)
	if err != nil {
		t.Fatalf("call page test inside the private network namespace failed: %v", err)
	}
	if !bytes.Contains(out, []byte("--- PASS: TestCallPageTimeline")) {
		t.Fatal("the inner test did not pass")
	}
	t.Logf("screenshot: %s", shot)
}

// ensurePlaywright installs playwright-core (package-lock.json) when it is missing.
func ensurePlaywright(t *testing.T) {
	if _, err := os.Stat("node_modules/playwright-core"); err == nil {
		return
	}
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

// The call: speech.wav (segments at 0.40–2.34, 3.34–5.42, 6.12–7.13 s) on the caller's leg, the
// same 1.5 s later on the agent's, and a DTMF 7 (852 + 1209 Hz, 150 ms) on the caller's at 8.0 s.
const (
	agentDelayMS = 1500
	digitAtMS    = 8000
	callMS       = 9400
)

var speechSegsMS = [][2]int{{400, 2343}, {3343, 5420}, {6120, 7132}}

func twoLegCall(t *testing.T) *filesrc.Recording {
	a, err := wav.ReadFile("../../proc/testdata/speech.wav")
	if err != nil {
		t.Fatal(err)
	}
	if a.Rate != 8000 || a.Format != wav.FormatPCM || len(a.Channels) != 1 {
		t.Fatalf("speech.wav: %d Hz format %d, %d channels", a.Rate, a.Format, len(a.Channels))
	}
	n := callMS * 8
	caller, agent := make([]byte, 2*n), make([]byte, 2*n)
	copy(caller, a.Channels[0])
	copy(agent[2*agentDelayMS*8:], a.Channels[0])
	amp := 32767 * math.Pow(10, -10.0/20) // each tone at -10 dBFS (peak)
	for i := 0; i < 150*8; i++ {
		x := float64(i) / 8000
		v := amp * (math.Sin(2*math.Pi*852*x) + math.Sin(2*math.Pi*1209*x)) / 2
		binary.LittleEndian.PutUint16(caller[2*(digitAtMS*8+i):], uint16(int16(v)))
	}
	rec, err := filesrc.FromAudio(&wav.Audio{Format: wav.FormatPCM, Rate: 8000, BitsPerSample: 16, Channels: [][]byte{caller, agent}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

type pageView struct {
	State string `json:"state"`
	Legs  []struct {
		Leg    int          `json:"leg"`
		Name   string       `json:"name"`
		Segs   [][2]float64 `json:"segs"`
		Digits []struct {
			Digit string  `json:"digit"`
			MS    float64 `json:"ms"`
		} `json:"digits"`
		Meter   []float64 `json:"meter"`
		Updates int       `json:"updates"`
	} `json:"legs"`
	Overtalk   [][2]float64 `json:"overtalk"`
	Accounting []struct {
		Leg       int      `json:"leg"`
		Lost      int      `json:"lost"`
		Processed int      `json:"processed"`
		Cells     []string `json:"cells"`
	} `json:"accounting"`
	Lost    string `json:"lost"`
	Verdict string `json:"verdict"`
	Gaps    int    `json:"gaps"`
	Note    string `json:"note"`
	Escaped bool   `json:"escaped"`
}

func callPageTimeline(t *testing.T) {
	if ifs, _ := net.Interfaces(); len(ifs) != 1 || ifs[0].Flags&net.FlagLoopback == 0 {
		t.Fatalf("not in a loopback-only network namespace: %v", ifs)
	}
	rec := twoLegCall(t)
	log := zerolog.Nop()
	wc := worker.DefaultConfig()
	wc.Processors = []string{"accounting", "speech", "dtmf", "levels", "summary"}
	wc.ProcessorOptions = map[string]proc.Options{"levels": {"meter_ms": "200"}}
	// The page must show 0 lost on a shared 2-core machine: the worker's overload protection
	// (stale-frame drops, shedding) would rightly drop there and is tested in internal/stack.
	// The second call's frames are 30 s late on purpose: dropped as stale.
	wc.LagThreshold, wc.MaxFrameAge = time.Minute, 10*time.Second
	// NATS permissions on, as the one-process mode and production run: ingest's identity must
	// be allowed to read the events it streams to the page.
	auth, err := natsauth.NewSet(natsauth.Local([]string{wc.Pool}, "demo"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := stack.Start(stack.Config{Workers: 1, Worker: wc, Log: log, Auth: auth})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cfg := whip.DefaultConfig()
	cfg.UDPAddr, cfg.OpenTenant = "127.0.0.1:0", "demo" // as the one-process mode serves it
	w, stopWhip := serveWHIP(t, s, cfg, log)
	defer stopWhip()
	lc := whip.DefaultListenConfig()
	lc.Addr = "127.0.0.1:0"
	pub, err := whip.ListenPublic(lc, w.PublicHandler(), log)
	if err != nil {
		t.Fatal(err)
	}
	pctx, pstop := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); _ = pub.Run(pctx) }()
	defer func() { pstop(); <-served }()
	for deadline := time.Now().Add(10 * time.Second); len(s.Routers[0].Workers()) == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no worker visible to the router")
		}
	}
	if res, err := http.Get(pub.URL() + "/call/view.js"); err != nil || res.StatusCode != 200 {
		t.Fatalf("view.js: %v %v", res, err)
	}

	const callID, lossyID = "page-call-1", "page-call-lossy"
	shot := os.Getenv("CALLROUTER_E2E_SHOT")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	script, _ := filepath.Abs("callpage.mjs")
	cmd := exec.CommandContext(ctx, os.Getenv("NODE"), script, pub.URL()+"/call/?call="+callID, shot, lossyID)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	opened := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	lines.Buffer(nil, 1<<20)
	if !lines.Scan() || lines.Text() != "READY" {
		_ = cmd.Wait()
		t.Fatalf("the page did not start watching: %q\n%s", lines.Text(), stderr.String())
	}
	spec := rec.Spec("demo", callID, map[string]string{"label": `<img src=x onerror="document.title='pwned'">`})
	played := make(chan error, 2)
	go func() {
		_, err := player.Play(ctx, s.Ingest, rec, spec, 0, 1)
		played <- err
	}()
	var out []string
	for lines.Scan() {
		out = append(out, lines.Text())
		if lines.Text() == "READY" { // the page watches the second call: play it
			go func() { played <- lossyCall(ctx, s, lossyID) }()
		}
	}
	_, _ = io.Copy(io.Discard, stdout)
	werr := cmd.Wait()
	for range 2 {
		if err := <-played; err != nil {
			t.Errorf("playing a call: %v", err)
		}
	}
	if werr != nil || len(out) != 3 {
		t.Fatalf("callpage.mjs: %v, output %q\n%s", werr, out, stderr.String())
	}
	var v pageView
	if err := json.Unmarshal([]byte(out[0]), &v); err != nil {
		t.Fatalf("page report %q: %v\n%s", out[0], err, stderr.String())
	}
	var loss lossView
	if err := json.Unmarshal([]byte(out[2]), &loss); err != nil {
		t.Fatalf("page report %q: %v", out[2], err)
	}
	t.Logf("lossy call on the page: %s", out[2])
	checkLossyCall(t, loss)
	t.Logf("page (%v after the page opened): %s\n%s", time.Since(opened).Round(time.Millisecond), out[0], stderr.String())
	checkCallPage(t, v)
	t.Logf("screenshot %s", shot)
	start := time.Now()
	t.Cleanup(func() { t.Logf("teardown took %v", time.Since(start).Round(time.Millisecond)) })
}

func checkCallPage(t *testing.T, v pageView) {
	if len(v.Legs) != 2 || v.Legs[0].Name != "caller" || v.Legs[1].Name != "agent" {
		t.Fatalf("legs on the page: %+v", v.Legs)
	}
	// Each spoken segment is drawn on its leg within 100 ms (5 frames) at both ends.
	near := func(a, b float64) bool { return math.Abs(a-b) <= 100 }
	for i, leg := range v.Legs {
		shift := float64(i * agentDelayMS)
		for _, want := range speechSegsMS {
			found := false
			for _, s := range leg.Segs {
				found = found || near(s[0], float64(want[0])+shift) && near(s[1], float64(want[1])+shift)
			}
			if !found {
				t.Errorf("%s: no segment at %v ms (+%v); the page has %v", leg.Name, want, shift, leg.Segs)
			}
		}
	}
	// Overtalk: the caller's first segment and the agent's first overlap at 1.9–2.34 s.
	found := false
	for _, o := range v.Overtalk {
		found = found || near(o[0], 400+agentDelayMS) && near(o[1], 2343)
	}
	if !found {
		t.Errorf("no overtalk region at 1900–2343 ms; the page has %v", v.Overtalk)
	}
	if len(v.Legs[0].Digits) != 1 || v.Legs[0].Digits[0].Digit != "7" || !near(v.Legs[0].Digits[0].MS, digitAtMS) || len(v.Legs[1].Digits) != 0 {
		t.Errorf("DTMF markers: caller %+v, agent %+v; want a 7 at %d ms on the caller's leg only", v.Legs[0].Digits, v.Legs[1].Digits, digitAtMS)
	}
	for _, leg := range v.Legs {
		distinct := map[float64]bool{}
		loud := false
		for _, db := range leg.Meter {
			distinct[db] = true
			loud = loud || db > -40
		}
		if leg.Updates < callMS/200/2 || len(distinct) < 5 || !loud {
			t.Errorf("%s: the meter took %d level events and showed %d distinct values (%v) while the call ran; want it to move", leg.Name, leg.Updates, len(distinct), leg.Meter)
		}
	}
	if len(v.Accounting) != 2 || v.Lost != "0" || v.Gaps != 0 || !strings.Contains(v.Verdict, "no frame lost") {
		t.Fatalf("accounting: %+v, lost %q, %d gaps, verdict %q", v.Accounting, v.Lost, v.Gaps, v.Verdict)
	}
	for _, a := range v.Accounting {
		if a.Lost != 0 || a.Processed < callMS/20 {
			t.Errorf("leg %d accounting %+v; want every frame processed, 0 lost", a.Leg, a)
		}
	}
	if !strings.Contains(v.Note, "overtalk") || !strings.HasPrefix(v.State, "ended") {
		t.Errorf("state %q, speech note %q", v.State, v.Note)
	}
	if !v.Escaped {
		t.Error("markup in an event became part of the page")
	}
}

// lossyCall plays a one-second two-leg call whose caller frames 20–24 are captured 30 s before
// they are sent: the worker drops them as stale (max frame age 10 s), a gap with cause stale.
func lossyCall(ctx context.Context, s *stack.Stack, id string) error {
	rec := &filesrc.Recording{Codec: frame.CodecPCMU, Rate: 8000, Frames: [][][]byte{make([][]byte, 50), make([][]byte, 50)}}
	spec := rec.Spec("demo", id, nil)
	c, err := s.Ingest.StartCall(ctx, spec)
	if err != nil {
		return err
	}
	silence := bytes.Repeat([]byte{0xFF}, 160)
	start := time.Now()
	for i := 0; i < 50; i++ {
		time.Sleep(time.Until(start.Add(time.Duration(i) * 20 * time.Millisecond)))
		for leg := 0; leg < 2; leg++ {
			capture := time.Now()
			if leg == 0 && i >= 20 && i < 25 {
				capture = capture.Add(-30 * time.Second)
			}
			if err := c.SendAt(leg, silence, 0, capture); err != nil {
				return err
			}
		}
	}
	c.End("hangup")
	return nil
}

type lossView struct {
	Lost    string `json:"lost"`
	Verdict string `json:"verdict"`
	Gaps    []struct {
		Cause string `json:"cause"`
		Text  string `json:"text"`
	} `json:"gaps"`
	Rows   [][]string `json:"rows"`
	Marked []int      `json:"marked"` // gaps drawn on each leg's track
}

func checkLossyCall(t *testing.T, v lossView) {
	if v.Lost != "5" || !strings.Contains(v.Verdict, "5 frames lost") {
		t.Errorf("lossy call: lost %q, verdict %q; want 5 frames lost", v.Lost, v.Verdict)
	}
	if len(v.Gaps) != 1 || v.Gaps[0].Cause != "stale" || !strings.Contains(v.Gaps[0].Text, "caller: frames 20–24 (5,") {
		t.Errorf("lossy call gaps %+v; want the caller's frames 20–24, cause stale", v.Gaps)
	}
	if len(v.Rows) != 2 || v.Rows[0][3] != "5" || v.Rows[0][4] != "stale 5" || v.Rows[1][3] != "0" {
		t.Errorf("lossy call accounting rows %q; want the caller 5 lost (stale 5), the agent 0", v.Rows)
	}
	if len(v.Marked) != 2 || v.Marked[0] != 1 || v.Marked[1] != 0 {
		t.Errorf("gaps drawn on the legs' tracks: %v; want one on the caller's", v.Marked)
	}
}
