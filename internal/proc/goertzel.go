package proc

import "math"

// DTMF detection from audio (ITU-T Q.23 frequencies, Q.24 acceptance): Goertzel filters at the
// eight DTMF frequencies over blocks of 102 samples at 8 kHz (12.75 ms; the bins are 78 Hz wide,
// so adjacent row frequencies 73 Hz apart fall near the first null). A block is a hit for a digit
// when its strongest row and column tones are each above the minimum level, each stands clear of
// the other tones of its group, the twist between them is within bounds, and the two tones carry
// most of the block's energy (speech spreads its energy, which is what rejects it). A digit needs
// two consecutive hit blocks (so tones of 40 ms or more are always detected and tones under
// 25.5 ms never are) and ends after two blocks without it.

const (
	dtmfBlock     = 102
	dtmfRate      = 8000
	dtmfMinBlocks = 2
	dtmfEndBlocks = 2
)

var dtmfFreqs = [8]float64{697, 770, 852, 941, 1209, 1336, 1477, 1633}

// dtmfKeys maps row*4+col to the digit.
const dtmfKeys = "123A456B789C*0#D"

// DTMFConfig tunes in-band detection ("dtmf.min_level_db=-38" and so on).
type DTMFConfig struct {
	MinLevelDB      float64 // each tone's minimum RMS level, dBFS
	MaxForwardTwist float64 // column tone louder than row tone by at most this, dB
	MaxReverseTwist float64 // row tone louder than column tone by at most this, dB
	MinToneRatio    float64 // share of the block's energy the two tones must carry
	MinPeakRatioDB  float64 // the chosen tone exceeds the next tone of its group by this, dB
	MergeWindowMS   int64   // in-band and RFC 4733 reports of a digit this close are one digit
}

// DefaultDTMFConfig returns the defaults documented in docs/processors.md.
func DefaultDTMFConfig() DTMFConfig {
	return DTMFConfig{MinLevelDB: -38, MaxForwardTwist: 8, MaxReverseTwist: 10, MinToneRatio: 0.6, MinPeakRatioDB: 6, MergeWindowMS: 100}
}

type goertzel struct {
	cfg                    DTMFConfig
	coef                   [8]float32
	minPow, fwd, rev, peak float64
	buf                    [dtmfBlock]float32
	n                      int
	pos                    int64 // samples consumed since the stream began
	cand, hits, misses     int
	on                     bool
	digit                  int
	start, lastEnd         int64 // sample positions of the current digit
}

// dtmfHit is a detected digit, in sample positions at 8 kHz since the stream began.
type dtmfHit struct {
	digit      byte
	start, end int64
}

func newGoertzel(cfg DTMFConfig) *goertzel {
	g := &goertzel{cfg: cfg, cand: -1, digit: -1}
	for i, f := range dtmfFreqs {
		g.coef[i] = float32(2 * math.Cos(2*math.Pi*f/dtmfRate))
	}
	// A tone of RMS level L dBFS (amplitude A = √2·32768·10^(L/20)) gives |X|² = (A·N/2)².
	a := math.Sqrt2 * 32768 * math.Pow(10, cfg.MinLevelDB/20)
	g.minPow = (a * dtmfBlock / 2) * (a * dtmfBlock / 2)
	g.fwd = math.Pow(10, cfg.MaxForwardTwist/10)
	g.rev = math.Pow(10, cfg.MaxReverseTwist/10)
	g.peak = math.Pow(10, cfg.MinPeakRatioDB/10)
	return g
}

// reset forgets a partial block and any digit in progress (at a gap in the audio), reporting a
// digit that had been detected.
func (g *goertzel) reset(emit func(dtmfHit)) {
	g.flush(emit)
	g.n, g.pos, g.cand, g.hits, g.misses = 0, 0, -1, 0, 0
}

// flush reports the digit in progress, if any, as ended.
func (g *goertzel) flush(emit func(dtmfHit)) {
	if g.on {
		emit(dtmfHit{dtmfKeys[g.digit], g.start, g.lastEnd})
		g.on, g.digit = false, -1
	}
}

// feed runs samples through the detector and calls emit for each digit that ends.
func (g *goertzel) feed(x []int16, emit func(dtmfHit)) {
	for len(x) > 0 {
		k := copy16(g.buf[g.n:], x)
		g.n += k
		x = x[k:]
		if g.n < dtmfBlock {
			return
		}
		g.n = 0
		start := g.pos
		g.pos += dtmfBlock
		g.block(g.classify(), start, emit)
	}
}

func copy16(dst []float32, src []int16) int {
	n := min(len(dst), len(src))
	for i := range n {
		dst[i] = float32(src[i])
	}
	return n
}

// classify returns the digit index (row*4+col) this block holds, or -1.
func (g *goertzel) classify() int {
	var pow [8]float64
	var energy float64
	// Two passes of four filters each: the eight recurrences in one loop would spill registers.
	for half := 0; half < 8; half += 4 {
		c0, c1, c2, c3 := g.coef[half], g.coef[half+1], g.coef[half+2], g.coef[half+3]
		var a1, a2, b1, b2, d1, d2, e1, e2 float32
		for _, v := range g.buf {
			a1, a2 = v+c0*a1-a2, a1
			b1, b2 = v+c1*b1-b2, b1
			d1, d2 = v+c2*d1-d2, d1
			e1, e2 = v+c3*e1-e2, e1
		}
		pow[half] = float64(a1*a1 + a2*a2 - c0*a1*a2)
		pow[half+1] = float64(b1*b1 + b2*b2 - c1*b1*b2)
		pow[half+2] = float64(d1*d1 + d2*d2 - c2*d1*d2)
		pow[half+3] = float64(e1*e1 + e2*e2 - c3*e1*e2)
	}
	for _, v := range g.buf {
		energy += float64(v) * float64(v)
	}
	r, c := best(pow[:4]), best(pow[4:])
	pr, pc := pow[r], pow[4+c]
	if pr < g.minPow || pc < g.minPow {
		return -1
	}
	if pc > pr*g.fwd || pr > pc*g.rev {
		return -1
	}
	for i := range 4 {
		if i != r && pow[i]*g.peak > pr {
			return -1
		}
		if i != c && pow[4+i]*g.peak > pc {
			return -1
		}
	}
	if energy == 0 || 2*(pr+pc)/(dtmfBlock*energy) < g.cfg.MinToneRatio {
		return -1
	}
	return r*4 + c
}

func best(p []float64) int {
	b := 0
	for i := range p {
		if p[i] > p[b] {
			b = i
		}
	}
	return b
}

func (g *goertzel) block(d int, start int64, emit func(dtmfHit)) {
	end := start + dtmfBlock
	if g.on {
		if d == g.digit {
			g.misses, g.lastEnd = 0, end
			return
		}
		g.misses++
		if g.misses < dtmfEndBlocks {
			return
		}
		g.flush(emit)
		g.cand, g.hits = -1, 0
		return
	}
	if d < 0 {
		g.cand, g.hits = -1, 0
		return
	}
	if d != g.cand {
		g.cand, g.hits, g.start = d, 0, start
	}
	g.hits++
	if g.hits >= dtmfMinBlocks {
		g.on, g.digit, g.misses, g.lastEnd = true, d, 0, end
	}
}
