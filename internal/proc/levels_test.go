package proc

import (
	"math"
	"strings"
	"testing"
)

// TestLevels measures a -20 dBFS tone with a clipped burst on one leg and silence on the other.
func TestLevels(t *testing.T) {
	a := tone(8000, 8000, []float64{1000}, []float64{-20}) // 1 s; a sine's RMS in dBFS
	for i := 4000; i < 4160; i++ {                         // one frame driven far past full scale
		a[i] = int16(max(-32768, min(32767, 4*32767*math.Sin(2*math.Pi*1000*float64(i)/8000))))
	}
	rec := multi(t, [][]int16{a, make([]int16, 8000)}, 8000, false)
	c := newFakeCall(rec, "levels")
	playFrames(start(t, c, []string{"levels"}, nil), rec, nil)
	lv := c.of("levels")[0].(Levels)
	l0, l1 := lv.Legs[0], lv.Legs[1]
	if l0.Frames != 50 || l0.ActiveFrames != 50 {
		t.Errorf("leg 0 frames %d active %d", l0.Frames, l0.ActiveFrames)
	}
	if l0.ClippedFrames != 1 || l0.ClippedSamples < 50 {
		t.Errorf("leg 0 clipped %d samples in %d frames", l0.ClippedSamples, l0.ClippedFrames)
	}
	if l0.PeakDB != 0 {
		t.Errorf("peak %v dBFS, want 0", l0.PeakDB)
	}
	if l0.MeanDB < -17 || l0.MeanDB > -15 { // (49 × -20 dB + 1 × ~-1 dB) / 50
		t.Errorf("mean %v dBFS, want about -16 (one loud frame in 50)", l0.MeanDB)
	}
	if l1.MeanDB != -100 || l1.ActiveFrames != 0 || l1.ClippedSamples != 0 {
		t.Errorf("silent leg %+v", l1)
	}
}

// TestSummaryWhateverTheOrder lists "summary" first: it still waits for the others' sections.
func TestSummaryWhateverTheOrder(t *testing.T) {
	speech, _ := readPCM(t, "testdata/speech.wav")
	digits, _ := readPCM(t, "testdata/dtmf-short.wav")
	digits = append(digits, make([]int16, len(speech)-len(digits))...)
	rec := multi(t, [][]int16{speech, digits}, 8000, true)
	c := newFakeCall(rec, "sum")
	hs := start(t, c, []string{"summary", "speech", "dtmf", "levels", "record", "accounting"}, recordOpts(t.TempDir()))
	playFrames(hs, rec, func(leg int, seq uint32) bool { return leg == 0 && seq == 7 })
	sums := c.of("summary")
	if len(sums) != 1 {
		t.Fatalf("%d summaries", len(sums))
	}
	s := sums[0].(Summary)
	if s.Reason != StopEnd || s.Speech == nil || s.DTMF == nil || s.Levels == nil || s.Recording == nil {
		t.Fatalf("summary %+v", s)
	}
	if s.DTMF.Legs[1].Digits != "4826" || s.DTMF.Legs[0].Digits != "" {
		t.Errorf("digits %+v", s.DTMF.Legs)
	}
	if s.Legs[0].Lost != 1 || s.Legs[0].Frames != rec.Len()-1 || s.Legs[1].Frames != rec.Len() {
		t.Errorf("legs %+v", s.Legs)
	}
	if s.DurationMS != int64(rec.Len())*20 {
		t.Errorf("duration %d ms, want %d", s.DurationMS, rec.Len()*20)
	}
	if sh := c.Shared(); sh.refs != 0 || len(sh.sections) != 0 || len(sh.finishers) != 0 {
		t.Errorf("shared state kept after the last Stop: %d refs, %d sections, %d finishers", sh.refs, len(sh.sections), len(sh.finishers))
	}
}

// TestLevelsMeter: with meter_ms each leg gets a "level" event per meter_ms of its media, the
// level of that window; without it, none.
func TestLevelsMeter(t *testing.T) {
	a := append(tone(8000, 8000, []float64{1000}, []float64{-20}), make([]int16, 8000)...) // 1 s tone, 1 s silence
	rec := multi(t, [][]int16{a, make([]int16, 16000)}, 8000, false)
	c := newFakeCall(rec, "meter")
	playFrames(start(t, c, []string{"levels"}, map[string]Options{"levels": {"meter_ms": "200"}}), rec, nil)
	var got [2][]Level
	for _, e := range c.of("level") {
		l := e.(Level)
		got[l.Leg] = append(got[l.Leg], l)
	}
	if len(got[0]) != 10 || len(got[1]) != 10 {
		t.Fatalf("level events per leg: %d, %d; want 10 each (2 s at 200 ms)", len(got[0]), len(got[1]))
	}
	for i, l := range got[0] {
		want := -20.0
		if i >= 5 {
			want = -100
		}
		if l.MS != int64(i+1)*200 || l.Name != "caller" || math.Abs(l.RMSDB-want) > 0.5 {
			t.Errorf("leg 0 event %d: %+v; want ms %d, about %v dBFS", i, l, (i+1)*200, want)
		}
	}
	if l := got[1][3]; l.RMSDB != -100 || l.PeakDB != -100 || l.Name != "agent" {
		t.Errorf("silent leg: %+v", l)
	}
	c2 := newFakeCall(rec, "nometer")
	playFrames(start(t, c2, []string{"levels"}, nil), rec, nil)
	if n := len(c2.of("level")); n != 0 {
		t.Errorf("%d level events without meter_ms", n)
	}
	for _, bad := range []string{"-20", "30", "x"} {
		if _, err := Build([]string{"levels"}, map[string]Options{"levels": {"meter_ms": bad}}); err == nil || !strings.Contains(err.Error(), "meter_ms") {
			t.Errorf("meter_ms=%s: %v", bad, err)
		}
	}
}
