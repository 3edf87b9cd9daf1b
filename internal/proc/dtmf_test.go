package proc

import (
	"fmt"
	"strings"
	"testing"

	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/peertest"
)

func digitsFrom(c *fakeCall, leg uint8) (string, []DTMFEvent) {
	var b strings.Builder
	var evs []DTMFEvent
	for _, e := range c.of("dtmf") {
		ev := e.(DTMFEvent)
		if ev.Leg == leg {
			b.WriteString(ev.Digit)
			evs = append(evs, ev)
		}
	}
	return b.String(), evs
}

func runDTMF(t testing.TB, rec *filesrc.Recording) (string, []DTMFEvent) {
	t.Helper()
	c := newFakeCall(rec, "dtmf")
	playFrames(start(t, c, []string{"dtmf"}, nil), rec, nil)
	return digitsFrom(c, 0)
}

// TestDTMFCommittedFixtures plays the sox-generated μ-law sequences: every digit at -10 dBFS,
// low level (-30/-32 dBFS), twist (6 dB reverse, 5 dB forward) and Q.24's shortest 40 ms
// tones with 40 ms pauses.
func TestDTMFCommittedFixtures(t *testing.T) {
	for name, ds := range dtmfFixtures {
		t.Run(name, func(t *testing.T) {
			rec, err := filesrc.Load("testdata/"+name+".wav", 0)
			if err != nil {
				t.Fatal(err)
			}
			if rec.Codec != frame.CodecPCMU {
				t.Fatalf("fixture codec %s", rec.Codec)
			}
			got, evs := runDTMF(t, rec)
			if want := digitsOf(ds); got != want {
				t.Fatalf("digits %q, want %q", got, want)
			}
			// Start times: 200 ms lead, then on+off per digit; within two frames.
			at := int64(200)
			for i, d := range ds {
				if diff := evs[i].MS - at; diff < -40 || diff > 40 {
					t.Errorf("digit %d (%c) at %d ms, truth %d ms", i, d.Digit, evs[i].MS, at)
				}
				if evs[i].Source != DTMFInBand {
					t.Errorf("source %q", evs[i].Source)
				}
				at += int64(d.OnMS + d.OffMS)
			}
		})
	}
}

// TestDTMFFreshSox generates other sequences with sox at test time.
func TestDTMFFreshSox(t *testing.T) {
	if !have("sox") {
		peertest.Missing(t, "sox not installed")
	}
	dir := t.TempDir()
	for i, ds := range [][]digitTone{
		seq("0800D*#", 100, 100, -6, -6),
		seq("31415926", 45, 45, -24, -22),
		{{'7', 50, 50, -20, -27}, {'7', 50, 50, -27, -22}, {'7', 50, 50, -15, -15}},
	} {
		rec, err := filesrc.Load(genDTMF(t, dir, fmt.Sprint("fresh", i), ds, 100), 0)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := runDTMF(t, rec); got != digitsOf(ds) {
			t.Errorf("sequence %d: digits %q, want %q", i, got, digitsOf(ds))
		}
	}
}

// TestDTMFRejects checks Q.24's non-operate conditions that the detector enforces.
func TestDTMFRejects(t *testing.T) {
	pause := make([]int16, 1600)
	mk := func(ms int, f []float64, db []float64) []int16 {
		return append(append(append([]int16{}, pause...), tone(8000, ms*8, f, db)...), pause...)
	}
	cases := []struct {
		name string
		pcm  []int16
		want string
	}{
		{"20ms tone", mk(20, []float64{697, 1209}, []float64{-10, -10}), ""},
		{"14 dB reverse twist", mk(100, []float64{697, 1209}, []float64{-6, -20}), ""},
		{"12 dB forward twist", mk(100, []float64{697, 1209}, []float64{-22, -10}), ""},
		{"too quiet", mk(100, []float64{697, 1209}, []float64{-45, -45}), ""},
		{"one tone", mk(100, []float64{697}, []float64{-10}), ""},
		{"three tones", mk(100, []float64{697, 852, 1209}, []float64{-10, -10, -10}), ""},
		{"+1.5% frequency", mk(60, []float64{697 * 1.015, 1209 * 1.015}, []float64{-10, -10}), "1"},
		{"-1.5% frequency", mk(60, []float64{941 * 0.985, 1633 * 0.985}, []float64{-10, -10}), "D"},
		{"tone in noise", addNoise(mk(60, []float64{852, 1477}, []float64{-20, -20}), -40), "9"},
	}
	for _, c := range cases {
		if got, _ := runDTMF(t, mono(t, c.pcm, 8000, false)); got != c.want {
			t.Errorf("%s: digits %q, want %q", c.name, got, c.want)
		}
	}
}

func addNoise(x []int16, db float64) []int16 {
	// A deterministic pseudo-random noise (xorshift), uniform, at about db dBFS RMS.
	s := uint32(2463534242)
	amp := 32768 * 1.732 * pow10(db/20)
	out := make([]int16, len(x))
	for i, v := range x {
		s ^= s << 13
		s ^= s >> 17
		s ^= s << 5
		n := (float64(s)/float64(1<<32)*2 - 1) * amp
		out[i] = int16(max(-32768, min(32767, float64(v)+n)))
	}
	return out
}

// teRecord builds a telephone-event payload of one record.
func teRecord(event byte, end bool, durMS uint16, startTS uint32) []byte {
	return frame.AppendTelephoneEvent(nil, frame.TelephoneEvent{Event: event, End: end, Volume: 10, DurationMS: durMS, Start: startTS})
}

// TestDTMFTelephoneEventsMerged feeds RFC 4733 events, with the repeated end packets, and a
// digit that is present both in-band and as an event: each digit is reported once.
func TestDTMFTelephoneEventsMerged(t *testing.T) {
	rec := mono(t, make([]int16, 8000*3), 8000, true) // 3 s of silence, PCMU
	// In-band '5' at 1000-1100 ms in the audio.
	five := tone(8000, 800, []float64{770, 1336}, []float64{-10, -10})
	pcmuTone := make([]byte, len(five))
	for i, v := range five {
		pcmuTone[i] = encodeMu(v)
	}
	for i := 0; i < 5; i++ {
		rec.Frames[0][50+i] = pcmuTone[i*160 : (i+1)*160]
	}
	c := newFakeCall(rec, "te")
	hs := start(t, c, []string{"dtmf", "speech"}, nil)
	for i := 0; i < rec.Len(); i++ {
		seq := uint32(i)
		h := frame.Header{Codec: frame.CodecPCMU, SampleRate: 8000, Seq: seq, MediaTS: seq * 160}
		payload := rec.Frames[0][i]
		switch {
		case i >= 20 && i < 25: // '1' as events at 400 ms, 100 ms, end packet thrice (frames 24, 25, 26)
			h.Codec, payload = frame.CodecTelephoneEvent, teRecord(1, i == 24, uint16((i-19)*20), 20*160)
		case i == 25 || i == 26:
			h.Codec, payload = frame.CodecTelephoneEvent, teRecord(1, true, 100, 20*160)
		case i >= 52 && i < 56: // '5' as events overlapping the in-band '5'
			h.Codec, payload = frame.CodecTelephoneEvent, teRecord(5, i == 55, uint16((i-51)*20), 52*160)
		case i >= 100 && i < 104: // '#' events whose end packet was lost: ended by audio
			h.Codec, payload = frame.CodecTelephoneEvent, teRecord(11, false, uint16((i-99)*20), 100*160)
		case i == 110: // an event code that is not a digit (RFC 4733 flash = 16) is ignored
			h.Codec, payload = frame.CodecTelephoneEvent, teRecord(16, true, 20, 110*160)
		}
		f := Frame{Header: h, Payload: payload}
		for _, hd := range hs {
			hd.Frame(&f)
		}
	}
	for _, hd := range hs {
		hd.Stop(StopEnd)
	}
	got, evs := digitsFrom(c, 0)
	if got != "15#" {
		t.Fatalf("digits %q (%+v), want \"15#\"", got, evs)
	}
	if evs[0].MS != 400 || evs[0].DurationMS != 100 || evs[0].Source != DTMFRFC4733 {
		t.Errorf("first digit %+v", evs[0])
	}
}

func TestDTMFOptions(t *testing.T) {
	if _, err := Build([]string{"dtmf"}, map[string]Options{"dtmf": {"min_levle_db": "-30"}}); err == nil {
		t.Error("a misspelt option was accepted")
	}
	if _, err := Build([]string{"dtmf"}, map[string]Options{"dtmf": {"min_level_db": "-30", "merge_window_ms": "80"}}); err != nil {
		t.Error(err)
	}
}

// TestDTMFTwistSweep checks every digit at the twist the defaults guarantee (8 dB reverse, 6 dB
// forward), at several alignments against the detector's blocks, 45 ms long.
func TestDTMFTwistSweep(t *testing.T) {
	for i := range len(dtmfKeys) {
		f := rowCol[dtmfKeys[i]]
		for _, lv := range [][2]float64{{-16, -24}, {-26, -20}, {-30, -30}} {
			for lead := 0; lead < 102; lead += 17 {
				pcm := append(make([]int16, 800+lead), tone(8000, 360, f[:], lv[:])...)
				pcm = append(pcm, make([]int16, 800)...)
				if got, _ := runDTMF(t, mono(t, pcm, 8000, false)); got != string(dtmfKeys[i]) {
					t.Errorf("digit %c at row %v col %v dBFS, lead %d: got %q", dtmfKeys[i], lv[0], lv[1], lead, got)
				}
			}
		}
	}
}

// TestDTMFAcrossLoss loses frames on the leg (the detector resets at the gap): digits away from
// the loss are all still reported, once.
func TestDTMFAcrossLoss(t *testing.T) {
	rec, err := filesrc.Load("testdata/dtmf-normal.wav", 0)
	if err != nil {
		t.Fatal(err)
	}
	c := newFakeCall(rec, "loss")
	// 200 ms lead, then 70 ms tone + 60 ms pause per digit: frames 4-5 (80-120 ms) are in the
	// lead, frame 22 (440-460 ms) in the pause after the second digit (330-400 ms).
	playFrames(start(t, c, []string{"dtmf"}, nil), rec, func(leg int, seq uint32) bool { return seq == 4 || seq == 5 || seq == 22 })
	if got, _ := digitsFrom(c, 0); got != digitsOf(dtmfFixtures["dtmf-normal"]) {
		t.Errorf("digits %q, want %q", got, digitsOf(dtmfFixtures["dtmf-normal"]))
	}
}
