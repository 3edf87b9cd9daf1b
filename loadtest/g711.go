package loadtest

import (
	"encoding/binary"
	"fmt"

	"github.com/callrouter/callrouter/internal/frame"
)

// linearToULaw encodes one 16-bit sample as G.711 μ-law (ITU-T G.711, the classic Sun
// reference algorithm: bias 0x84, clip 32635).
func linearToULaw(s int16) byte {
	const bias, clip = 0x84, 32635
	v := int(s)
	sign := 0
	if v < 0 {
		v, sign = -v, 0x80
	}
	v = min(v, clip) + bias
	exp := 7
	for mask := 0x4000; v&mask == 0 && exp > 0; mask >>= 1 {
		exp--
	}
	mant := (v >> (exp + 3)) & 0x0F
	return ^byte(sign | exp<<4 | mant)
}

// toG711 makes a recording sendable over RTP as G.711: μ-law and A-law pass; 8 kHz PCM16 is
// encoded to μ-law; anything else is an error (resample with sox first).
func toG711(r *Recording) error {
	switch r.Codec {
	case frame.CodecPCMU, frame.CodecPCMA:
		if r.Rate == 8000 {
			return nil
		}
	case frame.CodecL16:
		if r.Rate == 8000 {
			for _, leg := range r.Frames {
				for i, p := range leg {
					out := make([]byte, len(p)/2)
					for k := range out {
						out[k] = linearToULaw(int16(binary.LittleEndian.Uint16(p[2*k:])))
					}
					leg[i] = out
				}
			}
			r.Codec = frame.CodecPCMU
			return nil
		}
	}
	return fmt.Errorf("loadtest: %s: SIP mode sends 8 kHz G.711; this is %s at %d Hz (sox in.wav -r 8000 -e mu-law out.wav)", r.Name, r.Codec, r.Rate)
}
