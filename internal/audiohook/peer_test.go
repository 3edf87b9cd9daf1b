package audiohook

import (
	"bytes"
	"context"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
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
	// AH_TIMEOUT bounds the whole client run, ts-node compiling the client included: on a loaded
	// 2-core machine that start-up alone took more than the wrapper's default (seconds + 45).
	cmd.Env = append(os.Environ(), append([]string{"AH_QUIET=1", "AH_LOG=" + logPath, "AH_NPM_OFFLINE=1", "TS_NODE_TRANSPILE_ONLY=1", "AH_TIMEOUT=150"}, env...)...)
	cmd.WaitDelay = 10 * time.Second
	b, err := cmd.CombinedOutput()
	l, _ := os.ReadFile(logPath)
	return string(b), string(l), err
}

// TestReferenceClientPasses runs Genesys's reference client against the server: a signed
// upgrade, open → opened (stereo PCMU chosen), 3 s of audio in 200 ms messages, ping/pong,
// close → closed must give the wrapper's RESULT: PASS; the worker must get every sample the
// client sent of both channels byte for byte on legs caller and agent, cut into 20 ms frames with
// nothing filled; and the in-band DTMF digits of the external channel, detected by the worker,
// must come back to the client as AudioHook "event" messages (it asked for them in customConfig).
//
// What the client sent is what its close message's position says, in 200 ms blocks of the WAV:
// under load the reference client (mediasource-wav.ts, unmodified) has two file reads in flight
// at once, and then may send two blocks in the order the reads completed, or end the stream one
// block early (the second read finds the file's end, the first one's audio is then dropped as
// the stream has ended). Its position still counts what it sent. The server cannot tell either
// from a clean stream (binary messages carry no position), so the test accepts both, and
// nothing else: every block once, at most one block short, nothing filled.
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
	sent := closePosition(t, log, m[1])
	if sent%block != 0 || sent > samples || sent < samples-block {
		t.Fatalf("the client's close says %d samples sent, want %d (or one %d-sample block less)", sent, samples, block)
	}
	if len(got[0]) != sent || len(got[1]) != sent {
		t.Fatalf("audio differs: caller %d bytes, agent %d bytes, want the %d samples the client sent", len(got[0]), len(got[1]), sent)
	}
	inOrder := bytes.Equal(got[0], ext[:sent]) && bytes.Equal(got[1], in[:sent])
	if !inOrder {
		// Every block received must be one the client read, each once (identical blocks, of
		// silence or whole periods of the tone, are interchangeable).
		used := make([]bool, sent/block)
		for i := 0; i < sent; i += block {
			found := false
			for j := 0; j < sent && !found; j += block {
				if !used[j/block] && bytes.Equal(got[0][i:i+block], ext[j:j+block]) && bytes.Equal(got[1][i:i+block], in[j:j+block]) {
					used[j/block], found = true, true
				}
			}
			if !found {
				t.Fatalf("audio differs: the block at sample %d of the call is no block of the WAV the client had left to send", i)
			}
		}
		t.Logf("the client sent its 200 ms blocks out of order (two file reads in flight)")
	}
	// The client logs each event message's parameters once at INFO ("Event message: ...").
	var ds string
	digit := regexp.MustCompile(`"digit": "([0-9])"`)
	for _, block := range strings.Split(log, "Event message: ")[1:] {
		if d := digit.FindStringSubmatch(block); d != nil {
			ds += d[1]
		}
	}
	if want := "159"; ds != want && (inOrder || sortedDigits(ds) != want) {
		t.Fatalf("digits in the client's event messages %q, want %s:\n%s", ds, want, log)
	}
}

// block is the reference client's audio message: 200 ms, 1600 samples per channel.
const block = 1600

// closePosition returns the position, in samples, of the close message the client logged for a
// session (every message it sends is logged as indented JSON at debug level).
func closePosition(t *testing.T, log, session string) int {
	t.Helper()
	m := regexp.MustCompile(`(?s)"type": "close",\s*"id": "` + regexp.QuoteMeta(session) + `",[^}]*?"position": "PT([0-9.]+)S"`).FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("no close message with a position in the client log:\n%s", log)
	}
	secs, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return int(math.Round(secs * 8000))
}

func sortedDigits(s string) string {
	b := []byte(s)
	slices.Sort(b)
	return string(b)
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
		// 100 frames, or 90 when the client ended one block early (see TestReferenceClientPasses).
		sent := closePosition(t, log, id)
		if strings.Join(legs, ",") != "caller" || n != sent/160 || sent != 16000 && sent != 16000-block {
			t.Fatalf("call %s: legs %v, %d audio frames, the client's close says %d samples sent; want caller and 100 frames", call, legs, n, sent)
		}
	}
}
