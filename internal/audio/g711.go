package audio

import "math/bits"

// G.711 (ITU-T G.711, 1988) companding, as in the Sun reference implementation: 8-bit μ-law and
// A-law codes to 16-bit linear PCM and back. Decoding is a table lookup.

var muLawTable, aLawTable [256]int16

func init() {
	for i := range 256 {
		muLawTable[i] = muLawToLinear(byte(i))
		aLawTable[i] = aLawToLinear(byte(i))
	}
}

func muLawToLinear(u byte) int16 {
	u = ^u
	t := (int32(u&0x0f) << 3) + 0x84
	t <<= (u & 0x70) >> 4
	if u&0x80 != 0 {
		return int16(0x84 - t)
	}
	return int16(t - 0x84)
}

func aLawToLinear(a byte) int16 {
	a ^= 0x55
	t := int32(a&0x0f) << 4
	switch seg := (a & 0x70) >> 4; seg {
	case 0:
		t += 8
	case 1:
		t += 0x108
	default:
		t += 0x108
		t <<= seg - 1
	}
	if a&0x80 != 0 {
		return int16(t)
	}
	return int16(-t)
}

// MuLaw returns the linear value of a μ-law code.
func MuLaw(u byte) int16 { return muLawTable[u] }

// ALaw returns the linear value of an A-law code.
func ALaw(a byte) int16 { return aLawTable[a] }

// EncodeMuLaw returns the μ-law code of a linear sample.
func EncodeMuLaw(s int16) byte {
	const bias, clip = 0x84, 32635
	v := int32(s)
	var sign byte
	if v < 0 {
		sign = 0x80
		v = -v
	}
	v = min(v, clip) + bias
	exp := bits.Len32(uint32(v>>7)) - 1
	mant := byte(v>>(exp+3)) & 0x0f
	return ^(sign | byte(exp)<<4 | mant)
}

// EncodeALaw returns the A-law code of a linear sample.
func EncodeALaw(s int16) byte {
	v := int32(s) >> 3
	mask := byte(0xD5)
	if v < 0 {
		mask = 0x55
		v = -v - 1
	}
	seg := 0 // segment ends are 0x1F, 0x3F, 0x7F, ..., 0xFFF
	if v > 0x1F {
		seg = bits.Len32(uint32(v)) - 5
	}
	if seg >= 8 {
		return 0x7F ^ mask
	}
	a := byte(seg) << 4
	if seg < 2 {
		a |= byte(v>>1) & 0x0f
	} else {
		a |= byte(v>>seg) & 0x0f
	}
	return a ^ mask
}

type muLawDecoder struct{}

func (muLawDecoder) Rate() int { return 8000 }

func (muLawDecoder) Decode(p []byte, dst []int16) ([]int16, error) {
	n := len(dst)
	dst = grow(dst, len(p))
	out := dst[n:]
	for i, b := range p {
		out[i] = muLawTable[b]
	}
	return dst, nil
}

type aLawDecoder struct{}

func (aLawDecoder) Rate() int { return 8000 }

func (aLawDecoder) Decode(p []byte, dst []int16) ([]int16, error) {
	n := len(dst)
	dst = grow(dst, len(p))
	out := dst[n:]
	for i, b := range p {
		out[i] = aLawTable[b]
	}
	return dst, nil
}

// grow extends dst by n samples, reallocating only when its capacity is short.
func grow(dst []int16, n int) []int16 {
	l := len(dst)
	if cap(dst)-l < n {
		nd := make([]int16, l, 2*cap(dst)+n)
		copy(nd, dst)
		dst = nd
	}
	return dst[:l+n]
}
