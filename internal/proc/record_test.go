package proc

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/wav"
)

func recordOpts(dir string) map[string]Options { return map[string]Options{"record": {"dir": dir}} }

// recordCall plays rec through the record processor and returns the finished file's audio.
func recordedAudio(t *testing.T, rec *filesrc.Recording, lose func(int, uint32) bool) (*wav.Audio, Recording, string) {
	t.Helper()
	dir := t.TempDir()
	c := newFakeCall(rec, "rec-1")
	playFrames(start(t, c, []string{"record", "summary"}, recordOpts(dir)), rec, lose)
	evs := c.of("recording")
	if len(evs) != 1 {
		t.Fatalf("%d recording events", len(evs))
	}
	r := evs[0].(Recording)
	if r.Error != "" {
		t.Fatal(r.Error)
	}
	if want := filepath.Join(dir, "acme", "rec-1-e1.wav"); r.Path != want {
		t.Fatalf("path %q, want %q", r.Path, want)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "acme", ".*"))
	if len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	a, err := wav.ReadFile(r.Path)
	if err != nil {
		t.Fatal(err)
	}
	if sum := c.of("summary"); len(sum) != 1 || sum[0].(Summary).Recording == nil {
		t.Fatalf("summary without the recording: %v", sum)
	}
	return a, r, dir
}

// concat joins a leg's payloads.
func concat(frames [][]byte) []byte { return bytes.Join(frames, nil) }

// TestRecordG711SampleExact records a two-leg PCMU call with frames lost on each leg: every
// sample that arrived is byte-exact in its channel and every lost frame is μ-law silence.
func TestRecordG711SampleExact(t *testing.T) {
	speech, _ := readPCM(t, "testdata/speech.wav")
	digits, _ := readPCM(t, "testdata/dtmf-normal.wav")
	digits = append(digits, make([]int16, len(speech)-len(digits))...)
	rec := multi(t, [][]int16{speech, digits}, 8000, true)
	lost := func(leg int, seq uint32) bool { return (leg == 0 && seq == 30) || (leg == 1 && seq >= 10 && seq <= 12) }
	a, r, _ := recordedAudio(t, rec, lost)
	if a.Format != wav.FormatMuLaw || a.Rate != 8000 || len(a.Channels) != 2 || r.Format != "pcmu" {
		t.Fatalf("format %d rate %d channels %d (%s)", a.Format, a.Rate, len(a.Channels), r.Format)
	}
	for leg := range 2 {
		want := concat(rec.Frames[leg])
		for s := uint32(0); s < uint32(rec.Len()); s++ {
			if lost(leg, s) {
				for i := range 160 {
					want[int(s)*160+i] = 0xFF
				}
			}
		}
		if !bytes.Equal(a.Channels[leg], want) {
			t.Errorf("leg %d: recording differs from input (%d bytes, want %d)", leg, len(a.Channels[leg]), len(want))
		}
	}
	if r.Samples != int64(rec.Len()*160) || r.Channels[1] != "agent" {
		t.Errorf("event %+v", r)
	}
}

// TestRecordL16SampleExact records 8 kHz and 16 kHz L16 calls.
func TestRecordL16SampleExact(t *testing.T) {
	speech, _ := readPCM(t, "testdata/speech.wav")
	for _, rate := range []int{8000, 16000} {
		half := append(append([]int16{}, speech[len(speech)/2:]...), make([]int16, len(speech)-len(speech)/2-len(speech)/2)...)
		half = append(half, speech[:len(speech)/2]...)
		rec := multi(t, [][]int16{speech, half}, rate, false)
		a, r, _ := recordedAudio(t, rec, func(leg int, seq uint32) bool { return leg == 1 && seq == 5 })
		if a.Format != wav.FormatPCM || a.Rate != rate || r.Format != "pcm16" {
			t.Fatalf("format %d rate %d", a.Format, a.Rate)
		}
		for leg := range 2 {
			want := concat(rec.Frames[leg])
			if leg == 1 {
				clear(want[5*rate/50*2 : 6*rate/50*2])
			}
			if !bytes.Equal(a.Channels[leg], want) {
				t.Errorf("%d Hz leg %d: recording differs from input", rate, leg)
			}
		}
	}
}

// TestRecordMixedCodecs records a PCMU leg with an L16 16 kHz leg as PCM16 at 16 kHz; the L16
// leg stays exact.
func TestRecordMixedCodecs(t *testing.T) {
	speech, _ := readPCM(t, "testdata/speech.wav")
	a := multi(t, [][]int16{speech}, 8000, true)
	b := multi(t, [][]int16{append(speech, speech...)}, 16000, false) // same duration at 16 kHz
	rec := &filesrc.Recording{Codec: frame.CodecPCMU, Rate: 8000, Frames: [][][]byte{a.Frames[0], b.Frames[0]}}
	c := newFakeCall(rec, "mixed")
	c.spec.Legs[1].Codec, c.spec.Legs[1].Rate = frame.CodecL16, 16000
	dir := t.TempDir()
	hs := start(t, c, []string{"record"}, recordOpts(dir))
	for i := 0; i < rec.Len(); i++ {
		for leg, r := range []*filesrc.Recording{a, b} {
			f := Frame{Header: frame.Header{Codec: r.Codec, Leg: uint8(leg), SampleRate: uint32(r.Rate), Seq: uint32(i)}, Payload: r.Frames[0][i]}
			for _, h := range hs {
				h.Frame(&f)
			}
		}
	}
	hs[0].Stop(StopReleased)
	ev := c.of("recording")[0].(Recording)
	out, err := wav.ReadFile(ev.Path)
	if err != nil {
		t.Fatal(err)
	}
	if out.Rate != 16000 || out.Format != wav.FormatPCM || out.Samples() != rec.Len()*320 {
		t.Fatalf("rate %d format %d samples %d", out.Rate, out.Format, out.Samples())
	}
	if !bytes.Equal(out.Channels[1], concat(b.Frames[0])) {
		t.Error("the L16 16 kHz leg is not exact")
	}
	// The upsampled μ-law leg carries the same speech: its energy is within 1 dB.
	e := func(p []byte) float64 {
		var s float64
		for i := 0; i+1 < len(p); i += 2 {
			v := float64(int16(binary.LittleEndian.Uint16(p[i:])))
			s += v * v
		}
		return s
	}
	if r := e(out.Channels[0]) / e(out.Channels[1]); r < 0.79 || r > 1.26 {
		t.Errorf("upsampled leg energy ratio %.2f", r)
	}
}

// TestRecordNeverHalfWritten checks that until Stop only the temporary file exists.
func TestRecordNeverHalfWritten(t *testing.T) {
	speech, _ := readPCM(t, "testdata/speech.wav")
	rec := mono(t, speech, 8000, true)
	dir := t.TempDir()
	c := newFakeCall(rec, "crash")
	hs := start(t, c, []string{"record"}, recordOpts(dir))
	for i := 0; i < rec.Len(); i++ {
		f := Frame{Header: frame.Header{Codec: rec.Codec, SampleRate: 8000, Seq: uint32(i)}, Payload: rec.Frames[0][i]}
		hs[0].Frame(&f)
	}
	final := filepath.Join(dir, "acme", "crash-e1.wav")
	if _, err := os.Stat(final); !os.IsNotExist(err) {
		t.Fatalf("final file exists before Stop: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "acme", ".crash-e1.wav.part")); err != nil {
		t.Fatalf("no temporary file: %v", err)
	}
	hs[0].Stop(StopShutdown)
	if _, err := os.Stat(final); err != nil {
		t.Fatal(err)
	}
}

func TestRecordOptions(t *testing.T) {
	for _, o := range []Options{{"format": "mp3"}, {"rate": "11"}, {"window_ms": "10"}, {"dri": "/tmp"}} {
		if _, err := Build([]string{"record"}, map[string]Options{"record": o}); err == nil {
			t.Errorf("options %v accepted", o)
		}
	}
	if safeName("../x") != "_.._x" || safeName(".hidden") != "_.hidden" {
		t.Errorf("safeName: %q %q", safeName("../x"), safeName(".hidden"))
	}
}
