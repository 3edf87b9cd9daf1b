package audio

// G.722 (ITU-T G.722, 11/88): sub-band ADPCM, 16 kHz audio in 64 kbit/s. This is the decoder
// for mode 1 (64 kbit/s: 6 bits low band, 2 bits high band per byte), the only mode RTP uses
// (RFC 3551 §4.5.2; the RTP clock says 8000 but the audio is 16 kHz). Each payload byte yields
// two output samples. Block numbers in comments are the Recommendation's.

// Inverse quantizer outputs (G.722 Tables 6 and 7, scaled by 8) and scale-factor tables.
var (
	g722QM6 = [64]int32{
		-136, -136, -136, -136, -24808, -21904, -19008, -16704,
		-14984, -13512, -12280, -11192, -10232, -9360, -8576, -7856,
		-7192, -6576, -6000, -5456, -4944, -4464, -4008, -3576,
		-3168, -2776, -2400, -2032, -1688, -1360, -1040, -728,
		24808, 21904, 19008, 16704, 14984, 13512, 12280, 11192,
		10232, 9360, 8576, 7856, 7192, 6576, 6000, 5456,
		4944, 4464, 4008, 3576, 3168, 2776, 2400, 2032,
		1688, 1360, 1040, 728, 432, 136, -432, -136,
	}
	g722QM4 = [16]int32{0, -20456, -12896, -8968, -6288, -4240, -2584, -1200,
		20456, 12896, 8968, 6288, 4240, 2584, 1200, 0}
	g722QM2  = [4]int32{-7408, -1616, 7408, 1616}
	g722RL42 = [16]int32{0, 7, 6, 5, 4, 3, 2, 1, 7, 6, 5, 4, 3, 2, 1, 0}
	g722WL   = [8]int32{-60, -30, 58, 172, 334, 538, 1198, 3042}
	g722RH2  = [4]int32{2, 1, 2, 1}
	g722WH   = [3]int32{0, -214, 798}
	g722QMF  = [12]int32{3, -11, 12, 32, -210, 951, 3876, -805, 362, -156, 53, -11}
	g722ILB  [32]int32 // 2048 · 2^(i/32), rounded
)

func init() {
	// The Recommendation's table of 32 values is exactly this, rounded to integers.
	v := [32]int32{2048, 2093, 2139, 2186, 2233, 2282, 2332, 2383, 2435, 2489, 2543, 2599,
		2656, 2714, 2774, 2834, 2896, 2960, 3025, 3091, 3158, 3228, 3298, 3371, 3444, 3520,
		3597, 3676, 3756, 3838, 3922, 4008}
	g722ILB = v
}

// g722Band is one sub-band's adaptive predictor and scale factor state.
type g722Band struct {
	s, sp, sz int32
	r, p      [3]int32
	a, ap     [3]int32
	b, bp     [7]int32
	d         [7]int32
	nb, det   int32
}

func sat16(v int32) int32 { return max(-32768, min(32767, v)) }

// update is block 4: reconstruction, pole and zero predictor adaptation, prediction.
func (s *g722Band) update(dx int32) {
	s.d[0] = dx
	s.r[0] = sat16(s.s + dx)
	s.p[0] = sat16(s.sz + dx)

	// UPPOL2
	var sg [7]int32
	for i := range 3 {
		sg[i] = s.p[i] >> 15
	}
	wd1 := sat16(s.a[1] << 2)
	wd2 := wd1
	if sg[0] == sg[1] {
		wd2 = -wd1
	}
	wd2 = min(wd2, 32767)
	wd3 := wd2 >> 7
	if sg[0] == sg[2] {
		wd3 += 128
	} else {
		wd3 -= 128
	}
	wd3 += (s.a[2] * 32512) >> 15
	s.ap[2] = max(-12288, min(12288, wd3))

	// UPPOL1
	wd1 = -192
	if sg[0] == sg[1] {
		wd1 = 192
	}
	wd2 = (s.a[1] * 32640) >> 15
	s.ap[1] = sat16(wd1 + wd2)
	wd3 = sat16(15360 - s.ap[2])
	s.ap[1] = max(-wd3, min(wd3, s.ap[1]))

	// UPZERO
	wd1 = 128
	if dx == 0 {
		wd1 = 0
	}
	sg[0] = dx >> 15
	for i := 1; i < 7; i++ {
		sg[i] = s.d[i] >> 15
		wd2 = wd1
		if sg[i] != sg[0] {
			wd2 = -wd1
		}
		s.bp[i] = sat16(wd2 + (s.b[i]*32640)>>15)
	}

	// DELAYA
	for i := 6; i > 0; i-- {
		s.d[i] = s.d[i-1]
		s.b[i] = s.bp[i]
	}
	for i := 2; i > 0; i-- {
		s.r[i] = s.r[i-1]
		s.p[i] = s.p[i-1]
		s.a[i] = s.ap[i]
	}

	// FILTEP
	wd1 = (s.a[1] * sat16(s.r[1]+s.r[1])) >> 15
	wd2 = (s.a[2] * sat16(s.r[2]+s.r[2])) >> 15
	s.sp = sat16(wd1 + wd2)

	// FILTEZ
	s.sz = 0
	for i := 6; i > 0; i-- {
		s.sz += (s.b[i] * sat16(s.d[i]+s.d[i])) >> 15
	}
	s.sz = sat16(s.sz)

	// PREDIC
	s.s = sat16(s.sp + s.sz)
}

// scale is blocks 3L/3H SCALEL/SCALEH: the quantizer scale factor from its logarithm.
func (s *g722Band) scale(shift int32) {
	wd1 := (s.nb >> 6) & 31
	wd2 := shift - (s.nb >> 11)
	if wd2 < 0 {
		s.det = (g722ILB[wd1] << -wd2) << 2
	} else {
		s.det = (g722ILB[wd1] >> wd2) << 2
	}
}

// g722Decoder decodes G.722 mode 1 to 16 kHz PCM.
type g722Decoder struct {
	band [2]g722Band
	x    [24]int32 // receive QMF delay line
}

func newG722Decoder() *g722Decoder {
	d := &g722Decoder{}
	d.band[0].det = 32
	d.band[1].det = 8
	return d
}

func (d *g722Decoder) Rate() int { return 16000 }

func (d *g722Decoder) Decode(p []byte, dst []int16) ([]int16, error) {
	n := len(dst)
	dst = grow(dst, 2*len(p))
	out := dst[n:]
	lo, hi := &d.band[0], &d.band[1]
	for j, code := range p {
		// Low band: INVQBL with the 6-bit code, RECONS, LIMIT.
		ilr := int32(code & 0x3F)
		rlow := max(-16384, min(16383, lo.s+(lo.det*g722QM6[ilr])>>15))
		// INVQAL with the 4-bit code for adaptation; LOGSCL; SCALEL.
		i4 := ilr >> 2
		dlowt := (lo.det * g722QM4[i4]) >> 15
		lo.nb = max(0, min(18432, (lo.nb*127)>>7+g722WL[g722RL42[i4]]))
		lo.scale(8)
		lo.update(dlowt)

		// High band: INVQAH, RECONS, LIMIT; LOGSCH; SCALEH.
		ih := int32(code >> 6)
		dhigh := (hi.det * g722QM2[ih]) >> 15
		rhigh := max(-16384, min(16383, dhigh+hi.s))
		hi.nb = max(0, min(22528, (hi.nb*127)>>7+g722WH[g722RH2[ih]]))
		hi.scale(10)
		hi.update(dhigh)

		// Receive QMF: two 16 kHz samples from the two 8 kHz sub-band samples.
		copy(d.x[:22], d.x[2:])
		d.x[22] = rlow + rhigh
		d.x[23] = rlow - rhigh
		var x1, x2 int32
		for i := range 12 {
			x2 += d.x[2*i] * g722QMF[i]
			x1 += d.x[2*i+1] * g722QMF[11-i]
		}
		out[2*j] = int16(sat16(x1 >> 11))
		out[2*j+1] = int16(sat16(x2 >> 11))
	}
	return dst, nil
}
