// Package frame is callrouter's binary audio frame envelope: a fixed 32-byte little-endian header
// in front of one 20 ms codec payload. It uses the standard library only and allocates nothing to
// marshal or parse. docs/protocol.md documents the layout byte by byte.
//
//	offset size field
//	0      1    version (1)
//	1      1    flags (bit 0 gap-filled, bit 1 replayed, bit 2 last, bit 3 epoch start, bit 4 paused)
//	2      1    codec (see Codec)
//	3      1    leg index
//	4      4    sample rate, Hz
//	8      4    epoch
//	12     4    sequence number, per leg, gap-free from 0
//	16     4    media timestamp, in samples at the sample rate
//	20     8    capture time, Unix nanoseconds
//	28     2    duration, microseconds (20000)
//	30     2    payload length, bytes
//	32     n    payload
package frame

import (
	"encoding/binary"
	"errors"
	"time"
)

// Version is the envelope version this package writes and reads.
const Version = 1

// HeaderLen is the size of the fixed header.
const HeaderLen = 32

// MaxPayload is the largest payload accepted (48 kHz L16 stereo 20 ms is 3840 bytes).
const MaxPayload = 8192

// Duration is the nominal length of one frame.
const Duration = 20 * time.Millisecond

// Flags mark special frames.
type Flags uint8

// Frame flags.
const (
	// FlagGapFilled marks a frame synthesized by ingest for media that never arrived.
	FlagGapFilled Flags = 1 << 0
	// FlagReplayed marks a frame resent from ingest's ring after a re-placement.
	FlagReplayed Flags = 1 << 1
	// FlagLast marks the last frame of a leg: the call (or leg) ended.
	FlagLast Flags = 1 << 2
	// FlagEpochStart marks the first frame of a leg published at a new epoch.
	FlagEpochStart Flags = 1 << 3
	// FlagPaused marks a frame captured while the call was paused (a secure pause, e.g. while a
	// card number is taken): ingest withheld its audio, so the payload is empty, and the frame
	// only keeps the leg's sequence gap-free. A replayed paused frame keeps the flag.
	FlagPaused Flags = 1 << 4
)

// Codec identifies the payload encoding.
type Codec uint8

// Codecs. L16 is signed 16-bit little-endian PCM, mono.
const (
	CodecNone Codec = 0
	CodecPCMU Codec = 1
	CodecPCMA Codec = 2
	CodecL16  Codec = 3
	CodecOpus Codec = 4
	CodecG722 Codec = 5
	// CodecTelephoneEvent carries RFC 4733 DTMF events in place of audio for a 20 ms slot: one or
	// more 8-byte records (event code, RFC 4733 E|R|volume byte, duration so far in ms as uint16
	// LE, event start as a media timestamp of the leg as uint32 LE). docs/processors.md.
	CodecTelephoneEvent Codec = 6
)

var codecNames = [...]string{"none", "pcmu", "pcma", "l16", "opus", "g722", "telephone-event"}

// String returns the codec's lower-case name.
func (c Codec) String() string {
	if int(c) < len(codecNames) {
		return codecNames[c]
	}
	return "unknown"
}

// ParseCodec returns the codec with the given name.
func ParseCodec(s string) (Codec, bool) {
	for i, n := range codecNames {
		if n == s {
			return Codec(i), true
		}
	}
	return CodecNone, false
}

// Errors returned by Unmarshal.
var (
	// ErrShort means the buffer is shorter than the header or its declared payload.
	ErrShort = errors.New("frame: short buffer")
	// ErrVersion means the envelope version is not Version.
	ErrVersion = errors.New("frame: unknown version")
	// ErrCodec means the codec byte names no known codec.
	ErrCodec = errors.New("frame: unknown codec")
	// ErrTooLarge means the payload exceeds MaxPayload.
	ErrTooLarge = errors.New("frame: payload too large")
)

// Header is the fixed part of a frame.
type Header struct {
	Flags      Flags
	Codec      Codec
	Leg        uint8
	SampleRate uint32
	Epoch      uint32
	Seq        uint32
	MediaTS    uint32
	Capture    int64 // Unix nanoseconds
	DurationUS uint16
	PayloadLen uint16
}

// Has reports whether all of f are set.
func (h *Header) Has(f Flags) bool { return h.Flags&f == f }

// CaptureTime returns the capture time as a time.Time.
func (h *Header) CaptureTime() time.Time { return time.Unix(0, h.Capture) }

// MarshalSize returns the encoded size of a frame with this header.
func (h *Header) MarshalSize() int { return HeaderLen + int(h.PayloadLen) }

// MarshalTo writes the header into buf, which must hold HeaderLen bytes, and returns HeaderLen.
// PayloadLen must already be set to the length of the payload that follows.
func (h *Header) MarshalTo(buf []byte) (int, error) {
	if len(buf) < HeaderLen {
		return 0, ErrShort
	}
	if h.PayloadLen > MaxPayload {
		return 0, ErrTooLarge
	}
	buf[0] = Version
	buf[1] = byte(h.Flags)
	buf[2] = byte(h.Codec)
	buf[3] = h.Leg
	binary.LittleEndian.PutUint32(buf[4:], h.SampleRate)
	binary.LittleEndian.PutUint32(buf[8:], h.Epoch)
	binary.LittleEndian.PutUint32(buf[12:], h.Seq)
	binary.LittleEndian.PutUint32(buf[16:], h.MediaTS)
	binary.LittleEndian.PutUint64(buf[20:], uint64(h.Capture))
	binary.LittleEndian.PutUint16(buf[28:], h.DurationUS)
	binary.LittleEndian.PutUint16(buf[30:], h.PayloadLen)
	return HeaderLen, nil
}

// Append appends the header and payload to dst and returns the extended slice. It sets
// h.PayloadLen from payload.
func Append(dst []byte, h *Header, payload []byte) ([]byte, error) {
	if len(payload) > MaxPayload {
		return dst, ErrTooLarge
	}
	h.PayloadLen = uint16(len(payload))
	n := len(dst)
	need := n + HeaderLen + len(payload)
	if cap(dst) < need {
		nd := make([]byte, n, need)
		copy(nd, dst)
		dst = nd
	}
	dst = dst[:n+HeaderLen]
	if _, err := h.MarshalTo(dst[n:]); err != nil {
		return dst[:n], err
	}
	return append(dst, payload...), nil
}

// Unmarshal parses buf into h and returns the payload, which aliases buf.
func (h *Header) Unmarshal(buf []byte) (payload []byte, err error) {
	if len(buf) < HeaderLen {
		return nil, ErrShort
	}
	if buf[0] != Version {
		return nil, ErrVersion
	}
	h.Flags = Flags(buf[1])
	h.Codec = Codec(buf[2])
	if h.Codec == CodecNone || int(h.Codec) >= len(codecNames) {
		return nil, ErrCodec
	}
	h.Leg = buf[3]
	h.SampleRate = binary.LittleEndian.Uint32(buf[4:])
	h.Epoch = binary.LittleEndian.Uint32(buf[8:])
	h.Seq = binary.LittleEndian.Uint32(buf[12:])
	h.MediaTS = binary.LittleEndian.Uint32(buf[16:])
	h.Capture = int64(binary.LittleEndian.Uint64(buf[20:]))
	h.DurationUS = binary.LittleEndian.Uint16(buf[28:])
	h.PayloadLen = binary.LittleEndian.Uint16(buf[30:])
	if h.PayloadLen > MaxPayload {
		return nil, ErrTooLarge
	}
	end := HeaderLen + int(h.PayloadLen)
	if len(buf) < end {
		return nil, ErrShort
	}
	return buf[HeaderLen:end], nil
}

// MarshalText encodes the codec as its name, so JSON carries "pcmu" rather than a number.
func (c Codec) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// UnmarshalText parses a codec name.
func (c *Codec) UnmarshalText(b []byte) error {
	v, ok := ParseCodec(string(b))
	if !ok || v == CodecNone {
		return ErrCodec
	}
	*c = v
	return nil
}
