//go:build libopus && cgo

package audio

/*
#cgo pkg-config: opus
#include <opus.h>

// decode wraps opus_decode so that Go passes the state as a plain pointer: the state lives in Go
// memory (a []uint64), which the Go collector never moves, and holds offsets, not pointers.
static int decode(void *st, const unsigned char *p, int n, opus_int16 *pcm, int frames) {
	return opus_decode((OpusDecoder *)st, p, n, pcm, frames, 0);
}
static int dec_init(void *st, int rate) { return opus_decoder_init((OpusDecoder *)st, rate, 1); }
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// opusDecoder decodes one Opus packet per frame, mono, with libopus (built with -tags libopus
// and cgo; Debian's libopus-dev). Its state lives in Go memory, so nothing needs freeing.
type opusDecoder struct {
	st   []uint64 // an OpusDecoder, 8-byte aligned
	rate int
}

// OpusImpl names the Opus decoder this binary was built with: "pion/opus" (pure Go, the default)
// or "libopus" (-tags libopus).
const OpusImpl = "libopus"

func newOpusDecoder(rate int) (*opusDecoder, error) {
	if err := opusRateOK(rate); err != nil {
		return nil, err
	}
	size := int(C.opus_decoder_get_size(1))
	d := &opusDecoder{st: make([]uint64, (size+7)/8), rate: rate}
	if e := C.dec_init(unsafe.Pointer(&d.st[0]), C.int(rate)); e != C.OPUS_OK {
		return nil, fmt.Errorf("%w: libopus: %s", ErrRate, C.GoString(C.opus_strerror(e)))
	}
	return d, nil
}

func (d *opusDecoder) Rate() int { return d.rate }

func (d *opusDecoder) Decode(p []byte, dst []int16) ([]int16, error) {
	if len(p) == 0 {
		return dst, ErrPayload
	}
	n := len(dst)
	room := maxOpusFrame * d.rate / 48000
	dst = grow(dst, room)
	got := C.decode(unsafe.Pointer(&d.st[0]), (*C.uchar)(unsafe.Pointer(&p[0])), C.int(len(p)),
		(*C.opus_int16)(unsafe.Pointer(&dst[n])), C.int(room))
	if got < 0 {
		return dst[:n], fmt.Errorf("%w: libopus: %s", ErrPayload, C.GoString(C.opus_strerror(got)))
	}
	return dst[:n+int(got)], nil
}
