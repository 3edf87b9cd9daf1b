package sip

import "encoding/binary"

// dtmfEvent is one telephone event (RFC 4733 section 2.3) reported once per event.
type dtmfEvent struct {
	Code     uint8
	TS       uint32 // RTP timestamp of the event start
	SSRC     uint32
	Duration uint16 // ticks
	Ended    bool   // false when the end packets were all lost
}

// Digit returns the event's DTMF character (RFC 4733 section 3.2): 0-9 * # A-D, "flash".
func (e dtmfEvent) Digit() string {
	switch {
	case e.Code <= 9:
		return string(rune('0' + e.Code))
	case e.Code == 10:
		return "*"
	case e.Code == 11:
		return "#"
	case e.Code <= 15:
		return string(rune('A' + e.Code - 12))
	case e.Code == 16:
		return "flash"
	}
	return ""
}

// parseTelephoneEvent decodes an RFC 4733 payload: event, E bit, volume, duration.
func parseTelephoneEvent(p []byte) (code uint8, end bool, duration uint16, ok bool) {
	if len(p) < 4 {
		return 0, false, 0, false
	}
	return p[0], p[1]&0x80 != 0, binary.BigEndian.Uint16(p[2:4]), true
}

// dtmfDetector turns the repeated packets of telephone events into one report per event: on its
// first end packet, or, if every end packet was lost, when the next event starts or the stream
// ends. Packets of one event share its start timestamp.
type dtmfDetector struct {
	report func(dtmfEvent)
	active bool
	cur    dtmfEvent
	done   bool // cur was reported
}

func (d *dtmfDetector) push(ts, ssrc uint32, payload []byte) bool {
	code, end, dur, ok := parseTelephoneEvent(payload)
	if !ok || code > 16 {
		return false
	}
	if !d.active || ts != d.cur.TS || ssrc != d.cur.SSRC {
		d.flush()
		d.active, d.done = true, false
		d.cur = dtmfEvent{Code: code, TS: ts, SSRC: ssrc}
	}
	if d.done {
		return true // a retransmitted end packet
	}
	if dur > d.cur.Duration {
		d.cur.Duration = dur
	}
	if end {
		d.cur.Ended = true
		d.done = true
		d.report(d.cur)
	}
	return true
}

// flush reports an event whose end never arrived.
func (d *dtmfDetector) flush() {
	if d.active && !d.done {
		d.done = true
		d.report(d.cur)
	}
}
