package proc

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/peertest"
)

// segmentsOf pairs a leg's speech start and stop events into [start, stop) ms ranges.
func segmentsOf(t testing.TB, c *fakeCall, leg uint8) [][2]int64 {
	t.Helper()
	var out [][2]int64
	for _, e := range c.of("speech") {
		ev := e.(SpeechEvent)
		if ev.Leg != leg {
			continue
		}
		switch ev.State {
		case "start":
			if len(out) > 0 && out[len(out)-1][1] < 0 {
				t.Fatalf("two starts without a stop: %+v", ev)
			}
			out = append(out, [2]int64{ev.MS, -1})
		case "stop":
			if len(out) == 0 || out[len(out)-1][1] >= 0 {
				t.Fatalf("stop without a start: %+v", ev)
			}
			out[len(out)-1][1] = ev.MS
		}
	}
	return out
}

// checkSegments compares detected segments with ground truth within tol ms.
func checkSegments(t testing.TB, got [][2]int64, truth speechTruth, tol int64) {
	t.Helper()
	if len(got) != len(truth.Segments) {
		t.Fatalf("%d segments %v, want %d %v", len(got), got, len(truth.Segments), truth.Segments)
	}
	r := int64(truth.Rate)
	for i, s := range truth.Segments {
		ws, we := s[0]*1000/r, (s[1]*1000+r-1)/r
		if d := got[i][0] - ws; d < -tol || d > tol {
			t.Errorf("segment %d starts at %d ms, truth %d ms (off %d)", i, got[i][0], ws, d)
		}
		if d := got[i][1] - we; d < -tol || d > tol {
			t.Errorf("segment %d stops at %d ms, truth %d ms (off %d)", i, got[i][1], we, d)
		}
	}
}

func loadTruth(t testing.TB, path string) speechTruth {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var tr speechTruth
	if err := json.Unmarshal(b, &tr); err != nil {
		t.Fatal(err)
	}
	return tr
}

func runSpeech(t testing.TB, rec *filesrc.Recording) *fakeCall {
	c := newFakeCall(rec, "speech")
	playFrames(start(t, c, []string{"speech", "dtmf"}, nil), rec, nil)
	return c
}

// TestSpeechSegmentsMatchGroundTruth plays the committed espeak-ng fixture as L16 8 kHz, as
// PCMU and as L16 48 kHz and checks every segment's start and stop within two frames.
func TestSpeechSegmentsMatchGroundTruth(t *testing.T) {
	truth := loadTruth(t, "testdata/speech.json")
	pcm, _ := readPCM(t, "testdata/speech.wav")
	up := make([]int16, 0, len(pcm)*6)
	up, err := resample48(pcm, up)
	if err != nil {
		t.Fatal(err)
	}
	for name, rec := range map[string]*filesrc.Recording{
		"l16-8k": mono(t, pcm, 8000, false), "pcmu": mono(t, pcm, 8000, true), "l16-48k": mono(t, up, 48000, false),
	} {
		t.Run(name, func(t *testing.T) {
			c := runSpeech(t, rec)
			checkSegments(t, segmentsOf(t, c, 0), truth, 40)
			if d := c.of("dtmf"); len(d) != 0 {
				t.Errorf("digits detected in speech: %v", d)
			}
			sum := c.of("speech_summary")[0].(SpeechSummary)
			var talk int64
			for _, s := range truth.Segments {
				talk += (s[1] - s[0]) / 8
			}
			if d := sum.Legs[0].TalkMS - talk; d < -120 || d > 120 {
				t.Errorf("talk %d ms, truth %d ms", sum.Legs[0].TalkMS, talk)
			}
			if sum.LongestSilenceMS < 900 || sum.LongestSilenceMS > 1100 {
				t.Errorf("longest silence %d ms, truth 1000", sum.LongestSilenceMS)
			}
			if sum.SilenceMS+sum.Legs[0].TalkMS != sum.DurationMS {
				t.Errorf("silence %d + talk %d != duration %d", sum.SilenceMS, sum.Legs[0].TalkMS, sum.DurationMS)
			}
		})
	}
}

// TestSpeechFreshEspeak generates new speech with other silences at test time.
func TestSpeechFreshEspeak(t *testing.T) {
	if !have("espeak-ng") || !have("sox") {
		peertest.Missing(t, "espeak-ng or sox not installed")
	}
	path, truth := genSpeech(t, t.TempDir(), "fresh", []string{"Your call is important to us", "Goodbye"}, []int{260, 1500, 340})
	rec, err := filesrc.Load(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	c := runSpeech(t, rec)
	checkSegments(t, segmentsOf(t, c, 0), truth, 40)
	if d := c.of("dtmf"); len(d) != 0 {
		t.Errorf("digits detected in speech: %v", d)
	}
}

// TestSpeechAlsaRecordings runs Debian's alsa-utils voice prompts (48 kHz L16): each is one
// short utterance, with no digit in it.
func TestSpeechAlsaRecordings(t *testing.T) {
	files, _ := filepath.Glob("/usr/share/sounds/alsa/*.wav")
	if len(files) == 0 {
		peertest.Missing(t, "alsa-utils sounds not installed")
	}
	for _, f := range files {
		rec, err := filesrc.Load(f, 0)
		if err != nil {
			t.Fatal(err)
		}
		c := runSpeech(t, rec)
		if d := c.of("dtmf"); len(d) != 0 {
			t.Errorf("%s: digits detected: %v", filepath.Base(f), d)
		}
		segs := segmentsOf(t, c, 0)
		if len(segs) == 0 {
			t.Errorf("%s: no speech", filepath.Base(f))
		}
		t.Logf("%s: %d frames, segments %v", filepath.Base(f), rec.Len(), segs)
	}
}

// TestOvertalk puts the same utterance on two legs, the second 500 ms later.
func TestOvertalk(t *testing.T) {
	burst := tone(8000, 8000, []float64{300, 700}, []float64{-20, -24}) // 1 s
	a := append(append(make([]int16, 4000), burst...), make([]int16, 12000)...)
	b := append(append(make([]int16, 8000), burst...), make([]int16, 8000)...)
	rec := multi(t, [][]int16{a, b}, 8000, false)
	c := newFakeCall(rec, "overtalk")
	playFrames(start(t, c, []string{"speech"}, nil), rec, nil)
	sum := c.of("speech_summary")[0].(SpeechSummary)
	want := SpeechSummary{DurationMS: 3000, SilenceMS: 1500, LongestSilenceMS: 1000, OvertalkMS: 500}
	if sum.DurationMS != want.DurationMS || sum.SilenceMS != want.SilenceMS || sum.LongestSilenceMS != want.LongestSilenceMS || sum.OvertalkMS != want.OvertalkMS {
		t.Errorf("summary %+v, want %+v", sum, want)
	}
	for _, l := range sum.Legs {
		if l.TalkMS != 1000 || l.Segments != 1 {
			t.Errorf("leg %d: %+v, want 1000 ms in one segment", l.Leg, l)
		}
	}
}
