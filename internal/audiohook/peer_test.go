package audiohook

import (
	"bytes"
	"context"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/peertest"
	"github.com/callrouter/callrouter/internal/wav"
)

// peerDir holds Genesys's AudioHook reference client (MIT, unmodified; see its README.md). Its
// dependencies are installed with: npm ci --prefix internal/audiohook/testdata/peer --include=dev
const peerDir = "testdata/peer"

// needPeer returns the wrapper to run, or skips (fails under CALLROUTER_REQUIRE_PEERS).
func needPeer(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		peertest.Missing(t, "node is not installed")
	}
	for _, d := range []string{"ts-node", "typescript", "ws", "uuid", "commander", "pino", "pino-pretty", "tdigest"} {
		if _, err := os.Stat(filepath.Join(peerDir, "node_modules", d, "package.json")); err != nil {
			peertest.Missing(t, "the AudioHook reference client's dependencies are not installed (npm ci --prefix internal/audiohook/testdata/peer --include=dev)")
		}
	}
	abs, err := filepath.Abs(filepath.Join(peerDir, "run_client.sh"))
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// runPeer runs the reference client's wrapper and returns its verdict output and full log.
func runPeer(t *testing.T, script, url, wavPath string, secs string, env ...string) (out, log string, err error) {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "client.log")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, script, url, testKey, testSecret, wavPath, secs)
	cmd.Env = append(os.Environ(), append([]string{"AH_QUIET=1", "AH_LOG=" + logPath, "AH_NPM_OFFLINE=1", "TS_NODE_TRANSPILE_ONLY=1"}, env...)...)
	cmd.WaitDelay = 10 * time.Second
	b, err := cmd.CombinedOutput()
	l, _ := os.ReadFile(logPath)
	return string(b), string(l), err
}

// TestReferenceClientPasses runs Genesys's reference client against the server: a signed
// upgrade, open → opened (stereo PCMU chosen), 3 s of audio in 200 ms messages, ping/pong,
// close → closed must give the wrapper's RESULT: PASS; the worker must get every sample of both
// channels byte for byte on legs caller and agent, cut into 20 ms frames with nothing filled; and
// the in-band DTMF digits of the external channel, detected by the worker, must come back to the
// client as AudioHook "event" messages (it asked for them in customConfig).
func TestReferenceClientPasses(t *testing.T) {
	script := needPeer(t)
	e := startEnv(t, testConfig(t), envOpts{workers: 1, processors: []string{"dtmf"}})
	const samples = 3 * 8000
	ext, in := dtmfTones(samples, "159"), tone(samples, 0.2, 440)
	path := filepath.Join(t.TempDir(), "call.wav")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := wav.Write(f, wav.FormatMuLaw, 8000, 8, [][]byte{ext, in}); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
	out, log, err := runPeer(t, script, e.url, path, "3", `AH_CUSTOM_CONFIG={"events":["dtmf"]}`)
	if err != nil || !strings.Contains(out, "RESULT: PASS") {
		t.Fatalf("reference client: %v\n%s\n--- client log ---\n%s", err, out, log)
	}
	m := regexp.MustCompile(`SessionId: ([0-9a-f-]{36})`).FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("no session id in the client log:\n%s", log)
	}
	call := callFor(m[1])
	eventually(t, 10*time.Second, "the worker to stop the call", func() bool { _, ok := processed.stopped(call); return ok })
	processed.mu.Lock()
	legs := processed.specs[call]
	processed.mu.Unlock()
	if strings.Join(legs, ",") != "caller,agent" {
		t.Fatalf("legs %v, want caller,agent", legs)
	}
	var got [2][]byte
	for _, fr := range processed.frames(call) {
		if fr.h.Has(frame.FlagLast) {
			continue
		}
		if fr.h.Has(frame.FlagGapFilled) || fr.h.Codec != frame.CodecPCMU || len(fr.payload) != 160 {
			t.Fatalf("frame %+v (%d bytes): want unfilled 20 ms PCMU", fr.h, len(fr.payload))
		}
		got[fr.h.Leg] = append(got[fr.h.Leg], fr.payload...)
	}
	if !bytes.Equal(got[0], ext) || !bytes.Equal(got[1], in) {
		t.Fatalf("audio differs: caller %d bytes, agent %d bytes, want %d each, byte-identical", len(got[0]), len(got[1]), samples)
	}
	// The client logs each event message's parameters once at INFO ("Event message: ...").
	var ds string
	digit := regexp.MustCompile(`"digit": "([0-9])"`)
	for _, block := range strings.Split(log, "Event message: ")[1:] {
		if d := digit.FindStringSubmatch(block); d != nil {
			ds += d[1]
		}
	}
	if ds != "159" {
		t.Fatalf("digits in the client's event messages %q, want 159:\n%s", ds, log)
	}
}

// TestReferenceClientMonoSessions runs two concurrent reference-client sessions of a mono 16-bit
// PCM WAV (which it transcodes to PCMU and offers as [external] or [internal]): both PASS, each
// on its own call with one leg, caller, carrying the audio.
func TestReferenceClientMonoSessions(t *testing.T) {
	script := needPeer(t)
	e := startEnv(t, testConfig(t), envOpts{workers: 1})
	pcm := make([]byte, 2*16000) // 2 s
	for i := 0; i < len(pcm)/2; i++ {
		v := int16(6000 * math.Sin(2*math.Pi*500*float64(i)/8000))
		pcm[2*i], pcm[2*i+1] = byte(v), byte(uint16(v)>>8)
	}
	path := filepath.Join(t.TempDir(), "mono.wav")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := wav.Write(f, wav.FormatPCM, 8000, 16, [][]byte{pcm}); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
	out, log, err := runPeer(t, script, e.url, path, "2", "AH_SESSION_COUNT=2")
	if err != nil || !strings.Contains(out, "RESULT: PASS") {
		t.Fatalf("reference client: %v\n%s\n--- client log ---\n%s", err, out, log)
	}
	ids := map[string]bool{}
	for _, m := range regexp.MustCompile(`SessionId: ([0-9a-f-]{36})`).FindAllStringSubmatch(log, -1) {
		ids[m[1]] = true
	}
	if len(ids) != 2 {
		t.Fatalf("%d sessions in the client log, want 2", len(ids))
	}
	for id := range ids {
		call := callFor(id)
		eventually(t, 10*time.Second, "the worker to stop "+call, func() bool { _, ok := processed.stopped(call); return ok })
		processed.mu.Lock()
		legs := processed.specs[call]
		processed.mu.Unlock()
		n := 0
		for _, fr := range processed.frames(call) {
			if !fr.h.Has(frame.FlagLast) && !fr.h.Has(frame.FlagGapFilled) {
				n++
			}
		}
		if strings.Join(legs, ",") != "caller" || n != 100 {
			t.Fatalf("call %s: legs %v, %d audio frames, want caller and 100", call, legs, n)
		}
	}
}
