package proc

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/peertest"
)

// opusRecording reads a committed Opus fixture: the speech or DTMF fixture resampled to 48 kHz
// by sox and encoded by libopus 1.3.1 (VoIP, 24 kbit/s, 20 ms packets), each packet prefixed by
// its length (uint16 LE).
func opusRecording(t testing.TB, name string) *filesrc.Recording {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name + ".opus.pkts")
	if err != nil {
		t.Fatal(err)
	}
	var pk [][]byte
	for len(b) >= 2 {
		n := int(binary.LittleEndian.Uint16(b))
		pk = append(pk, b[2:2+n])
		b = b[2+n:]
	}
	return &filesrc.Recording{Codec: frame.CodecOpus, Rate: 48000, Frames: [][][]byte{pk}}
}

// TestOpusCall runs speech and DTMF through Opus: segments within two frames, exact digits.
func TestOpusCall(t *testing.T) {
	c := runSpeech(t, opusRecording(t, "speech"))
	checkSegments(t, segmentsOf(t, c, 0), loadTruth(t, "testdata/speech.json"), 40)
	if d := c.of("dtmf"); len(d) != 0 {
		t.Errorf("digits detected in speech: %v", d)
	}
	if got, _ := runDTMF(t, opusRecording(t, "dtmf-normal")); got != digitsOf(dtmfFixtures["dtmf-normal"]) {
		t.Errorf("digits through Opus %q, want %q", got, digitsOf(dtmfFixtures["dtmf-normal"]))
	}
}

// TestG722Call encodes the fixtures to G.722 with ffmpeg at test time (skipped without it).
func TestG722Call(t *testing.T) {
	if _, err := exec.LookPath("ffmpeg"); err != nil {
		peertest.Missing(t, "ffmpeg not installed")
	}
	dir := t.TempDir()
	g722 := func(name string) *filesrc.Recording {
		out := filepath.Join(dir, name+".g722")
		run(t, "ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", "testdata/"+name+".wav", "-ar", "16000", "-acodec", "g722", "-f", "g722", out)
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		r := &filesrc.Recording{Codec: frame.CodecG722, Rate: 8000, Frames: [][][]byte{nil}}
		for ; len(b) >= 160; b = b[160:] {
			r.Frames[0] = append(r.Frames[0], b[:160])
		}
		return r
	}
	c := runSpeech(t, g722("speech"))
	checkSegments(t, segmentsOf(t, c, 0), loadTruth(t, "testdata/speech.json"), 40)
	if got, _ := runDTMF(t, g722("dtmf-normal")); got != digitsOf(dtmfFixtures["dtmf-normal"]) {
		t.Errorf("digits through G.722 %q, want %q", got, digitsOf(dtmfFixtures["dtmf-normal"]))
	}
}
