package frame

import "encoding/binary"

// TelephoneEventLen is the size of one record in a CodecTelephoneEvent payload.
const TelephoneEventLen = 8

// TelephoneEvent is one RFC 4733 telephone-event as ingest forwards it in a CodecTelephoneEvent
// frame (docs/processors.md): one record per event packet received for the frame's 20 ms slot.
//
//	offset size field
//	0      1    event code (RFC 4733 §3.2: 0-9, 10 '*', 11 '#', 12-15 A-D)
//	1      1    RFC 4733 byte 1 verbatim: bit 7 E (end), bit 6 R, bits 0-5 volume (-dBm0)
//	2      2    duration so far, milliseconds, uint16 LE
//	4      4    the event's start, a media timestamp of the leg (the header's clock), uint32 LE
type TelephoneEvent struct {
	Event      uint8
	End        bool
	Volume     uint8 // 0-63, -dBm0
	DurationMS uint16
	Start      uint32
}

// AppendTelephoneEvent appends e's record to dst.
func AppendTelephoneEvent(dst []byte, e TelephoneEvent) []byte {
	b1 := e.Volume & 0x3F
	if e.End {
		b1 |= 0x80
	}
	dst = append(dst, e.Event, b1)
	dst = binary.LittleEndian.AppendUint16(dst, e.DurationMS)
	return binary.LittleEndian.AppendUint32(dst, e.Start)
}

// TelephoneEventAt parses the i-th record of a CodecTelephoneEvent payload; ok is false past the
// last whole record. A trailing partial record is ignored.
func TelephoneEventAt(p []byte, i int) (e TelephoneEvent, ok bool) {
	off := i * TelephoneEventLen
	if i < 0 || off+TelephoneEventLen > len(p) {
		return e, false
	}
	r := p[off : off+TelephoneEventLen]
	return TelephoneEvent{Event: r[0], End: r[1]&0x80 != 0, Volume: r[1] & 0x3F,
		DurationMS: binary.LittleEndian.Uint16(r[2:]), Start: binary.LittleEndian.Uint32(r[4:])}, true
}

// DTMFDigit returns the key of a DTMF event code ("0123456789*#ABCD"), or 0 for codes that are
// not DTMF digits (RFC 4733 §3.2 defines 0-15 as DTMF).
func DTMFDigit(event uint8) byte {
	if event > 15 {
		return 0
	}
	return "0123456789*#ABCD"[event]
}
