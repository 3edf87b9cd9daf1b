// Package audio decodes every payload encoding that ingest publishes (G.711 μ-law and A-law, L16
// at any rate, G.722, Opus) to 16-bit linear PCM, and converts PCM between sample rates. Decoders and
// resamplers are stateful per leg, append into caller-owned buffers and allocate nothing per frame
// once those buffers have grown.
package audio

import (
	"errors"
	"fmt"

	"github.com/callrouter/callrouter/internal/frame"
)

// Errors returned by NewDecoder, NewResampler and Decode.
var (
	// ErrCodec means the codec has no decoder in this package.
	ErrCodec = errors.New("audio: unsupported codec")
	// ErrRate means the sample rate is not one the codec or resampler supports.
	ErrRate = errors.New("audio: unsupported sample rate")
	// ErrPayload means a payload could not be decoded (odd L16 length, corrupt Opus packet).
	ErrPayload = errors.New("audio: undecodable payload")
)

// Decoder turns one frame's payload into 16-bit PCM at the codec's native rate.
type Decoder interface {
	// Decode appends the samples of payload to dst and returns the extended slice. A decoder is
	// not safe for concurrent use; keep one per leg, since some codecs carry state across frames.
	Decode(payload []byte, dst []int16) ([]int16, error)
	// Rate returns the sample rate of the decoded samples, in Hz.
	Rate() int
}

// NewDecoder returns a decoder for codec. rate is the leg's sample rate from the frame header:
// it must be 8000 for G.711 (0 is taken as 8000), the PCM rate for L16 (8000, 16000, 32000,
// 44100 or 48000), and for Opus the rate to decode to (8000, 12000, 16000, 24000 or 48000; 0 is
// taken as 48000; Opus decodes natively at each of these). G.722 always decodes to 16000 (rate
// may be 8000, its RTP clock rate, 16000 or 0).
func NewDecoder(codec frame.Codec, rate int) (Decoder, error) {
	switch codec {
	case frame.CodecPCMU, frame.CodecPCMA:
		if rate != 0 && rate != 8000 {
			return nil, fmt.Errorf("%w: %s at %d Hz", ErrRate, codec, rate)
		}
		if codec == frame.CodecPCMU {
			return muLawDecoder{}, nil
		}
		return aLawDecoder{}, nil
	case frame.CodecL16:
		switch rate {
		case 8000, 16000, 32000, 44100, 48000:
			return l16Decoder{rate: rate}, nil
		}
		return nil, fmt.Errorf("%w: l16 at %d Hz", ErrRate, rate)
	case frame.CodecG722:
		if rate != 0 && rate != 8000 && rate != 16000 {
			return nil, fmt.Errorf("%w: g722 at %d Hz", ErrRate, rate)
		}
		return newG722Decoder(), nil
	case frame.CodecOpus:
		if rate == 0 {
			rate = 48000
		}
		return newOpusDecoder(rate)
	}
	return nil, fmt.Errorf("%w: %s", ErrCodec, codec)
}

// SamplesPerFrame returns the number of samples in one 20 ms frame at rate.
func SamplesPerFrame(rate int) int { return rate / 50 }

// AppendSilence appends n zero samples to dst.
func AppendSilence(dst []int16, n int) []int16 {
	for range n {
		dst = append(dst, 0)
	}
	return dst
}
