package audio

import "encoding/binary"

// l16Decoder decodes callrouter's L16 payload: signed 16-bit little-endian mono PCM (see package
// frame; RFC 3551 L16 on the wire is big-endian, ingest swaps it).
type l16Decoder struct{ rate int }

func (d l16Decoder) Rate() int { return d.rate }

func (d l16Decoder) Decode(p []byte, dst []int16) ([]int16, error) {
	if len(p)%2 != 0 {
		return dst, ErrPayload
	}
	n := len(dst)
	dst = grow(dst, len(p)/2)
	out := dst[n:]
	for i := range out {
		out[i] = int16(binary.LittleEndian.Uint16(p[2*i:]))
	}
	return dst, nil
}

// AppendL16 appends samples to dst as L16 payload bytes (little-endian).
func AppendL16(dst []byte, samples []int16) []byte {
	for _, s := range samples {
		dst = binary.LittleEndian.AppendUint16(dst, uint16(s))
	}
	return dst
}
