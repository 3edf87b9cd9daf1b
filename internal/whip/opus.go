package whip

import "errors"

// errOpusPacket means an Opus packet breaks the framing rules of RFC 6716 section 3.
var errOpusPacket = errors.New("whip: malformed opus packet")

// maxOpusFrames is the most frames one Opus packet can hold (120 ms of 2.5 ms frames).
const maxOpusFrames = 48

// opusSilence is a valid 20 ms Opus packet (CELT fullband, code 0) that decodes to silence. It
// stands in for the 20 ms slots a sender left empty on purpose (DTX).
var opusSilence = []byte{0xF8, 0xFF, 0xFE}

// opusFrameSamples returns the duration, in 48 kHz samples, of each frame of a packet with this
// TOC byte (RFC 6716 section 3.1, table 2).
func opusFrameSamples(toc byte) int {
	cfg := toc >> 3
	switch {
	case cfg < 12: // SILK: 10, 20, 40, 60 ms
		return [4]int{480, 960, 1920, 2880}[cfg&3]
	case cfg < 16: // hybrid: 10, 20 ms
		return [2]int{480, 960}[cfg&1]
	default: // CELT: 2.5, 5, 10, 20 ms
		return [4]int{120, 240, 480, 960}[cfg&3]
	}
}

// opusFrameLen decodes a frame length (RFC 6716 section 3.2.1) at the start of b and returns it
// with the bytes it took.
func opusFrameLen(b []byte) (size, used int, err error) {
	if len(b) < 1 {
		return 0, 0, errOpusPacket
	}
	if b[0] < 252 {
		return int(b[0]), 1, nil
	}
	if len(b) < 2 {
		return 0, 0, errOpusPacket
	}
	return int(b[1])*4 + int(b[0]), 2, nil
}

// parseOpus splits an Opus packet into its frames (RFC 6716 section 3.2), stored in out, and
// returns how many there are and the duration of each in 48 kHz samples. The frames alias p.
func parseOpus(p []byte, out *[maxOpusFrames][]byte) (n, frameSamples int, err error) {
	if len(p) < 1 {
		return 0, 0, errOpusPacket
	}
	frameSamples = opusFrameSamples(p[0])
	body := p[1:]
	switch p[0] & 3 {
	case 0:
		out[0] = body
		return 1, frameSamples, nil
	case 1:
		if len(body)%2 != 0 {
			return 0, 0, errOpusPacket
		}
		h := len(body) / 2
		out[0], out[1] = body[:h], body[h:]
		return 2, frameSamples, nil
	case 2:
		size, used, err := opusFrameLen(body)
		if err != nil || used+size > len(body) {
			return 0, 0, errOpusPacket
		}
		out[0], out[1] = body[used:used+size], body[used+size:]
		return 2, frameSamples, nil
	}
	// Code 3: a frame-count byte, optional padding, then CBR or VBR frames.
	if len(body) < 1 {
		return 0, 0, errOpusPacket
	}
	vbr, padded, m := body[0]&0x80 != 0, body[0]&0x40 != 0, int(body[0]&0x3f)
	body = body[1:]
	if m == 0 || m*frameSamples > 5760 {
		return 0, 0, errOpusPacket
	}
	if padded {
		pad := 0
		for {
			if len(body) < 1 {
				return 0, 0, errOpusPacket
			}
			b := int(body[0])
			body = body[1:]
			if b == 255 {
				pad += 254
				continue
			}
			pad += b
			break
		}
		if pad > len(body) {
			return 0, 0, errOpusPacket
		}
		body = body[:len(body)-pad]
	}
	if !vbr {
		if len(body)%m != 0 {
			return 0, 0, errOpusPacket
		}
		size := len(body) / m
		for i := 0; i < m; i++ {
			out[i] = body[i*size : (i+1)*size]
		}
		return m, frameSamples, nil
	}
	sizes := [maxOpusFrames]int{}
	for i := 0; i < m-1; i++ {
		size, used, err := opusFrameLen(body)
		if err != nil {
			return 0, 0, errOpusPacket
		}
		sizes[i] = size
		body = body[used:]
	}
	for i := 0; i < m-1; i++ {
		if sizes[i] > len(body) {
			return 0, 0, errOpusPacket
		}
		out[i], body = body[:sizes[i]], body[sizes[i]:]
	}
	out[m-1] = body
	return m, frameSamples, nil
}
