//go:build !libopus || !cgo

package audio

import (
	"fmt"

	"github.com/pion/opus"
)

// opusDecoder decodes one Opus packet (RFC 6716) per frame, mono, with pion/opus: a pure-Go
// decoder of SILK, CELT and hybrid packets, so workers need neither cgo nor libopus.
// docs/processors.md records why, and what it costs against libopus. Built with -tags libopus (and
// cgo), opus_libopus.go decodes with libopus instead.
type opusDecoder struct {
	d    opus.Decoder
	rate int
}

// OpusImpl names the Opus decoder this binary was built with: "pion/opus" (pure Go, the default)
// or "libopus" (-tags libopus).
const OpusImpl = "pion/opus"

func newOpusDecoder(rate int) (*opusDecoder, error) {
	if err := opusRateOK(rate); err != nil {
		return nil, err
	}
	d, err := opus.NewDecoderWithOutput(rate, 1)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRate, err)
	}
	return &opusDecoder{d: d, rate: rate}, nil
}

func (d *opusDecoder) Rate() int { return d.rate }

func (d *opusDecoder) Decode(p []byte, dst []int16) ([]int16, error) {
	if len(p) == 0 {
		return dst, ErrPayload
	}
	n := len(dst)
	dst = grow(dst, maxOpusFrame*d.rate/48000)
	got, err := d.d.DecodeToInt16(p, dst[n:])
	if err != nil {
		return dst[:n], fmt.Errorf("%w: %v", ErrPayload, err)
	}
	return dst[:n+got], nil
}
