package whip

import (
	"context"
	"encoding/binary"
	"math"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/peertest"
	"github.com/callrouter/callrouter/internal/wav"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4/pkg/media/oggwriter"
)

// opusLevels decodes Opus packets (one per 20 ms) with opusdec (opus-tools, libopus) and returns
// the level of each 20 ms of the decoded audio.
func opusLevels(t *testing.T, packets [][]byte) []float64 {
	t.Helper()
	dec, err := exec.LookPath("opusdec")
	if err != nil {
		peertest.Missing(t, "opusdec (apt-get install opus-tools) is needed to decode Opus in this test")
	}
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.opus"), filepath.Join(dir, "out.wav")
	w, err := oggwriter.New(in, 48000, 1)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range packets {
		if err := w.WriteRTP(&rtp.Packet{Header: rtp.Header{SequenceNumber: uint16(i), Timestamp: uint32(i * 960)}, Payload: p}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if b, err := exec.CommandContext(ctx, dec, "--quiet", "--rate", "48000", in, out).CombinedOutput(); err != nil {
		t.Fatalf("opusdec: %v\n%s", err, b)
	}
	a, err := wav.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	pcm := a.Channels[0]
	var levels []float64
	for off := 0; off+960*2 <= len(pcm); off += 960 * 2 {
		var sum float64
		for i := 0; i < 960; i++ {
			v := float64(int16(binary.LittleEndian.Uint16(pcm[off+2*i:])))
			sum += v * v
		}
		levels = append(levels, math.Sqrt(sum/960))
	}
	return levels
}

// checkOpusSpeech decodes what the worker got and what the client sent and checks that wherever
// the recording speaks the worker's audio is well above silence.
func checkOpusSpeech(t *testing.T, sent [][]byte, got []gotFrame) {
	t.Helper()
	payloads := make([][]byte, len(got))
	for i, f := range got {
		payloads[i] = f.payload
	}
	src, rcv := opusLevels(t, sent), opusLevels(t, payloads)
	speech := 0
	for i, l := range src {
		if l < 1000 {
			continue
		}
		speech++
		best := 0.0
		for j := max(0, i-2); j <= min(len(rcv)-1, i+2); j++ {
			best = max(best, rcv[j])
		}
		if best < 500 {
			t.Errorf("20 ms #%d: decoded level %.0f at the worker where the recording speaks (%.0f)", i, best, l)
		}
	}
	if speech < 10 {
		t.Fatalf("only %d speech frames in the decoded recording", speech)
	}
	t.Logf("opus: decoded with libopus; %d speech frames above silence at the worker", speech)
}
