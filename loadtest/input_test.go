package loadtest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/wav"
)

func writeWAV(t *testing.T, path string, format, rate, bits, channels, samples int) {
	t.Helper()
	ch := make([][]byte, channels)
	for i := range ch {
		ch[i] = make([]byte, samples*bits/8)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := wav.Write(f, format, rate, bits, ch); err != nil {
		t.Fatal(err)
	}
}

func TestLoadInputsDirectoryRoundRobin(t *testing.T) {
	dir := t.TempDir()
	writeWAV(t, filepath.Join(dir, "a-mulaw.wav"), wav.FormatMuLaw, 8000, 8, 1, 8000)
	writeWAV(t, filepath.Join(dir, "b-alaw-stereo.wav"), wav.FormatALaw, 8000, 8, 2, 4000)
	writeWAV(t, filepath.Join(dir, "c-pcm16-48k.wav"), wav.FormatPCM, 48000, 16, 2, 48000)
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("skip me"), 0o644); err != nil {
		t.Fatal(err)
	}
	recs, err := LoadInputs([]string{dir}, 0)
	if err != nil {
		t.Fatal(err)
	}
	type want struct {
		name   string
		codec  frame.Codec
		rate   int
		legs   int
		frames int
	}
	wants := []want{{"a-mulaw.wav", frame.CodecPCMU, 8000, 1, 50}, {"b-alaw-stereo.wav", frame.CodecPCMA, 8000, 2, 25},
		{"c-pcm16-48k.wav", frame.CodecL16, 48000, 2, 50}}
	if len(recs) != len(wants) {
		t.Fatalf("%d recordings, want %d", len(recs), len(wants))
	}
	for i, w := range wants {
		r := recs[i]
		if r.Name != w.name || r.Codec != w.codec || r.Rate != w.rate || len(r.Frames) != w.legs || r.Len() != w.frames {
			t.Errorf("recording %d: %s %v %d Hz %d legs %d frames; want %+v", i, r.Name, r.Codec, r.Rate, len(r.Frames), r.Len(), w)
		}
	}
	one, err := LoadInputs([]string{filepath.Join(dir, "c-pcm16-48k.wav")}, 1)
	if err != nil || len(one) != 1 || len(one[0].Frames) != 1 {
		t.Errorf("legs=1: %v, %v", one, err)
	}
	if _, err := LoadInputs([]string{filepath.Join(dir, "missing.wav")}, 0); err == nil {
		t.Error("missing file: no error")
	}
	empty := t.TempDir()
	if _, err := LoadInputs([]string{empty}, 0); err == nil {
		t.Error("empty directory: no error")
	}
}
