package audio

import "fmt"

// maxOpusFrame is the longest Opus packet duration, 120 ms, in samples at 48 kHz.
const maxOpusFrame = 5760

// opusRateOK checks that Opus can decode to rate natively (RFC 6716 section 2: 8, 12, 16, 24
// or 48 kHz), whichever decoder the binary was built with.
func opusRateOK(rate int) error {
	switch rate {
	case 8000, 12000, 16000, 24000, 48000:
		return nil
	}
	return fmt.Errorf("%w: opus at %d Hz", ErrRate, rate)
}
