package audio

import (
	"fmt"
	"math"
)

// zeroCrossings is the number of zero crossings of the windowed-sinc prototype on each side of
// its centre, in units of the lower of the two rates: 8 gives about 70 dB of stop-band
// attenuation with a Blackman window, plenty for telephone-band analysis and recordings.
const zeroCrossings = 8

// Resampler converts a stream of PCM from one rate to another by rational polyphase filtering
// (upsample by L, low-pass, downsample by M) with a windowed-sinc prototype. It keeps the tail of
// the previous input, so frames may be fed one at a time without seams, and it compensates the
// filter's delay: output sample n is the input at time n/to seconds. A Resampler is not safe for
// concurrent use.
type Resampler struct {
	from, to int
	l, m, k  int
	taps     []float32 // [phase*k + j]
	buf      []float32 // k-1 samples of history, then pending input
	pos      int       // next output's position in buf, in upsampled units
	delay    int       // the filter's delay, in upsampled units
}

// NewResampler returns a resampler from one rate to another (both positive, at most 384 kHz).
func NewResampler(from, to int) (*Resampler, error) {
	if from <= 0 || to <= 0 || from > 384000 || to > 384000 {
		return nil, fmt.Errorf("%w: %d Hz to %d Hz", ErrRate, from, to)
	}
	g := gcd(from, to)
	r := &Resampler{from: from, to: to, l: to / g, m: from / g}
	if r.l > 480 || r.m > 480 {
		return nil, fmt.Errorf("%w: %d Hz to %d Hz needs too many filter phases", ErrRate, from, to)
	}
	if from == to {
		return r, nil
	}
	// The prototype runs at from*L; its cutoff sits just below half the lower rate.
	span := max(r.l, r.m)
	r.k = 2 * zeroCrossings * span / r.l
	if r.k < 2 {
		r.k = 2
	}
	n := r.k * r.l
	fc := 0.5 / float64(span) * 0.92
	// An odd active length puts the centre on a tap, so the delay is a whole number of
	// upsampled samples and can be compensated exactly; a spare last tap stays zero.
	active := n - 1 + n%2
	r.delay = (active - 1) / 2
	r.taps = make([]float32, n)
	for i := range active {
		x := float64(i - r.delay)
		s := 2 * fc
		if x != 0 {
			s = math.Sin(2*math.Pi*fc*x) / (math.Pi * x)
		}
		w := 0.42 - 0.5*math.Cos(2*math.Pi*float64(i)/float64(active-1)) + 0.08*math.Cos(4*math.Pi*float64(i)/float64(active-1))
		// Store by phase, each phase reversed so that run computes a forward dot product with
		// the input window: tap i serves phase i%L at input offset i/L.
		r.taps[(i%r.l)*r.k+r.k-1-i/r.l] = float32(s * w * float64(r.l))
	}
	r.Reset()
	return r, nil
}

// Reset forgets the stream so far, as at a discontinuity.
func (r *Resampler) Reset() {
	if r.k == 0 {
		return
	}
	r.buf = r.buf[:0]
	for range r.k - 1 {
		r.buf = append(r.buf, 0)
	}
	// Output 0 must be centred on input 0, which sits at buf index k-1.
	r.pos = (r.k-1)*r.l + r.delay
}

// From returns the input rate.
func (r *Resampler) From() int { return r.from }

// To returns the output rate.
func (r *Resampler) To() int { return r.to }

// Resample appends to dst the output for src and returns the extended slice. The output lags the
// input by the filter's half length (zeroCrossings samples at the lower rate); Flush drains it.
func (r *Resampler) Resample(src []int16, dst []int16) []int16 {
	if r.l == r.m {
		return append(dst, src...)
	}
	for _, s := range src {
		r.buf = append(r.buf, float32(s))
	}
	return r.run(dst)
}

// Flush appends the output still held back by the filter (as if the input were followed by
// silence) and resets the resampler.
func (r *Resampler) Flush(dst []int16) []int16 {
	if r.l == r.m {
		return dst
	}
	for range r.k {
		r.buf = append(r.buf, 0)
	}
	dst = r.run(dst)
	r.Reset()
	return dst
}

func (r *Resampler) run(dst []int16) []int16 {
	k, l := r.k, r.l
	for {
		i := r.pos / l // newest input sample the filter touches
		if i >= len(r.buf) {
			break
		}
		p := r.pos % l
		dst = append(dst, clamp16(dot(r.taps[p*k:p*k+k], r.buf[i-k+1:i+1])))
		r.pos += r.m
	}
	// Keep k-1 samples of history behind the next output's newest input.
	if drop := r.pos/l - (k - 1); drop > 0 {
		if drop > len(r.buf) {
			drop = len(r.buf)
		}
		n := copy(r.buf, r.buf[drop:])
		r.buf = r.buf[:n]
		r.pos -= drop * l
	}
	return dst
}

// Resample converts a whole buffer from one rate to another and appends the result to dst:
// len(src)*to/from samples, aligned with the input. For streams, use a Resampler.
func Resample(src []int16, from, to int, dst []int16) ([]int16, error) {
	r, err := NewResampler(from, to)
	if err != nil {
		return dst, err
	}
	want := len(dst) + int(int64(len(src))*int64(to)/int64(from))
	dst = r.Resample(src, dst)
	dst = r.Flush(dst)
	if len(dst) > want {
		dst = dst[:want]
	}
	for len(dst) < want {
		dst = append(dst, 0)
	}
	return dst, nil
}

// dot returns the dot product of h and x (len(x) ≥ len(h)), four lanes at a time.
func dot(h, x []float32) float32 {
	x = x[:len(h)]
	var a0, a1, a2, a3 float32
	j := 0
	for ; j+4 <= len(h); j += 4 {
		hh, xx := h[j:j+4:j+4], x[j:j+4:j+4]
		a0 += hh[0] * xx[0]
		a1 += hh[1] * xx[1]
		a2 += hh[2] * xx[2]
		a3 += hh[3] * xx[3]
	}
	for ; j < len(h); j++ {
		a0 += h[j] * x[j]
	}
	return (a0 + a1) + (a2 + a3)
}

func clamp16(v float32) int16 {
	switch {
	case v >= 32767:
		return 32767
	case v <= -32768:
		return -32768
	case v >= 0:
		return int16(v + 0.5)
	default:
		return int16(v - 0.5)
	}
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
