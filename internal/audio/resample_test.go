package audio

import (
	"math"
	"testing"
)

func sine(rate, n int, hz, amp float64) []int16 {
	out := make([]int16, n)
	for i := range out {
		out[i] = int16(amp * math.Sin(2*math.Pi*hz*float64(i)/float64(rate)))
	}
	return out
}

func TestResampleSine(t *testing.T) {
	for _, c := range []struct{ from, to int }{{48000, 8000}, {8000, 48000}, {16000, 8000}, {8000, 16000}, {48000, 16000}, {16000, 48000}, {44100, 8000}} {
		in := sine(c.from, c.from/2, 1000, 10000)
		out, err := Resample(in, c.from, c.to, nil)
		if err != nil {
			t.Fatal(err)
		}
		if want := len(in) * c.to / c.from; len(out) != want {
			t.Fatalf("%d→%d: %d samples, want %d", c.from, c.to, len(out), want)
		}
		ref := sine(c.to, len(out), 1000, 10000)
		// Ignore the edges, where the input starts and stops abruptly.
		e := c.to / 100
		if s := snr(ref[e:len(ref)-e], out[e:len(out)-e]); s < 45 {
			t.Errorf("%d→%d: %.1f dB SNR, want ≥ 45", c.from, c.to, s)
		}
	}
}

// TestResampleRejectsAlias checks that a tone above the output's Nyquist rate is removed, not
// folded into the band.
func TestResampleRejectsAlias(t *testing.T) {
	in := sine(48000, 24000, 6000, 10000)
	out, err := Resample(in, 48000, 8000, nil)
	if err != nil {
		t.Fatal(err)
	}
	var e float64
	for _, v := range out[100 : len(out)-100] {
		e += float64(v) * float64(v)
	}
	rms := math.Sqrt(e / float64(len(out)-200))
	if db := 20 * math.Log10(rms/(10000/math.Sqrt2)); db > -50 {
		t.Errorf("6 kHz tone at 8 kHz output: %.1f dB, want ≤ -50", db)
	}
}

// TestResampleStreaming checks that frame-by-frame resampling equals one-shot resampling.
func TestResampleStreaming(t *testing.T) {
	in := sine(48000, 48000/5, 440, 12000)
	whole, err := Resample(in, 48000, 8000, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewResampler(48000, 8000)
	if err != nil {
		t.Fatal(err)
	}
	var got []int16
	for off := 0; off < len(in); off += 960 {
		got = r.Resample(in[off:off+960], got)
	}
	got = r.Flush(got)
	for i := range whole {
		if got[i] != whole[i] {
			t.Fatalf("sample %d: streamed %d, whole %d", i, got[i], whole[i])
		}
	}
}

func TestResampleSameRateAndErrors(t *testing.T) {
	in := []int16{1, 2, 3}
	out, err := Resample(in, 8000, 8000, nil)
	if err != nil || len(out) != 3 || out[2] != 3 {
		t.Fatalf("same rate: %v %v", out, err)
	}
	for _, c := range [][2]int{{0, 8000}, {8000, -1}, {8000, 7919}} {
		if _, err := NewResampler(c[0], c[1]); err == nil {
			t.Errorf("NewResampler(%d, %d) accepted", c[0], c[1])
		}
	}
}

func TestResampleAllocs(t *testing.T) {
	r, err := NewResampler(48000, 8000)
	if err != nil {
		t.Fatal(err)
	}
	in := sine(48000, 960, 440, 1000)
	dst := make([]int16, 0, 400)
	r.Resample(in, dst) // grow the history buffer once
	if a := testing.AllocsPerRun(100, func() { dst = r.Resample(in, dst[:0]) }); a != 0 {
		t.Errorf("%.1f allocs per frame", a)
	}
}

func BenchmarkResample(b *testing.B) {
	for _, c := range []struct {
		name     string
		from, to int
	}{{"48k-8k", 48000, 8000}, {"16k-8k", 16000, 8000}, {"8k-16k", 8000, 16000}, {"48k-16k", 48000, 16000}} {
		b.Run(c.name, func(b *testing.B) {
			r, err := NewResampler(c.from, c.to)
			if err != nil {
				b.Fatal(err)
			}
			in := sine(c.from, c.from/50, 440, 1000)
			dst := make([]int16, 0, 2000)
			b.ReportAllocs()
			c0 := cpuTime()
			for b.Loop() {
				dst = r.Resample(in, dst[:0])
			}
			b.ReportMetric(float64(cpuTime()-c0)/float64(b.N), "cpu-ns/frame")
		})
	}
}
