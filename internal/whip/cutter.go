package whip

import (
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/timeline"
)

// reorderSlots is the reorder buffer's size in packets (a power of two); a packet further ahead
// than this forces the oldest missing ones to be given up whatever the window.
const reorderSlots = timeline.ReorderSlots

// Stats counts what the receiver did with one call's RTP. Every 20 ms of media time between the
// first and the last packet is in exactly one of Frames' parts (real, FilledLoss, FilledSilence)
// or in Skipped.
type Stats struct {
	Packets       uint64 `json:"packets"`
	Lost          uint64 `json:"lost_packets"`          // never arrived within the reorder window
	Late          uint64 `json:"late_packets"`          // arrived after their place was given up
	Duplicates    uint64 `json:"duplicate_packets"`     // the same sequence number twice
	Reordered     uint64 `json:"reordered_packets"`     // arrived out of order, put back in order
	Unsupported   uint64 `json:"unsupported_packets"`   // malformed or unsplittable Opus, counted as lost
	Frames        uint64 `json:"frames"`                // frames published, including filled ones
	FilledLoss    uint64 `json:"filled_loss_frames"`    // published with FlagGapFilled: media lost
	FilledSilence uint64 `json:"filled_silence_frames"` // codec silence where the sender sent nothing (DTX)
	Skipped       uint64 `json:"skipped_frames"`        // media time not filled: a jump (package timeline)
	Resyncs       uint64 `json:"resyncs"`               // the stream restarted (sequence or timestamp jump)
	Unpublished   uint64 `json:"unpublished_frames"`    // cut after the call had ended (hang-up race), not sent
}

// emitFunc publishes one 20 ms payload. The payload is only valid during the call.
type emitFunc func(payload []byte, flags frame.Flags, capture time.Time)

type slot struct {
	used    bool
	seq     uint16
	ts      uint32
	arrival int64
	buf     []byte
}

// cutter turns one RTP stream into 20 ms frames by the rules of package timeline: a small
// reorder buffer puts packets back in sequence order (waiting at most window for a missing one),
// and a media timeline driven by RTP timestamps cuts G.711 into 160-sample frames and Opus into
// one packet per 20 ms. Missing media is filled: after lost packets with gap-filled frames (empty
// payload for Opus, so a decoder conceals; G.711 silence), after a timestamp jump with no
// sequence gap (DTX or silence suppression) with codec silence. A jump the rules do not let fill
// re-anchors the timeline; one push makes at most timeline.MaxFramesPerPacket frames. It is not
// safe for concurrent use; after warm-up it allocates nothing.
type cutter struct {
	c      *codec
	window int64 // ns
	rules  timeline.Rules
	emit   emitFunc

	slots    [reorderSlots]slot
	buffered int
	started  bool
	nextSeq  uint16 // next sequence number to release
	highSeq  uint16 // highest sequence number seen
	lostRun  bool   // packets were given up since the last release
	released uint64 // bit i: packet nextSeq-1-i was released (not given up)

	timeline bool
	nextTS   uint32 // RTP timestamp of the next sample (G.711) or frame (Opus) to publish
	credit   timeline.Credit
	acc      []byte // G.711 samples of the frame being cut
	accFill  int    // what acc holds besides real samples: fillNone, fillSilence or fillLoss
	silence  []byte // one frame of codec silence (G.711)
	scratch  []byte
	opusFr   [maxOpusFrames][]byte

	Stats
}

func newCutter(c *codec, window, maxFill time.Duration, emit emitFunc) *cutter {
	k := &cutter{c: c, window: int64(window), rules: timeline.NewRules(int(c.samples)*50, window, maxFill), emit: emit}
	if c.frame != frame.CodecOpus {
		k.acc = make([]byte, 0, c.samples)
		k.silence = make([]byte, c.samples)
		fill := byte(0xFF) // μ-law zero
		if c.frame == frame.CodecPCMA {
			fill = 0xD5
		}
		for i := range k.silence {
			k.silence[i] = fill
		}
	}
	k.scratch = make([]byte, 0, 1500)
	for i := range k.slots {
		k.slots[i].buf = make([]byte, 0, 1500)
	}
	return k
}

// push takes one RTP packet that arrived at now (Unix ns).
func (k *cutter) push(seq uint16, ts uint32, payload []byte, now int64) {
	k.Packets++
	if !k.started {
		k.started, k.nextSeq, k.highSeq = true, seq, seq
	}
	d := int16(seq - k.nextSeq)
	if timeline.SeqJump(d) {
		k.flush()
		k.Resyncs++
		k.nextSeq, k.highSeq, k.lostRun, k.released = seq, seq, false, 0
		d = 0
	}
	if d < 0 {
		if -int(d) <= 64 && k.released&(1<<(-int(d)-1)) != 0 {
			k.Duplicates++
		} else {
			k.Late++
		}
		return
	}
	for int(uint16(seq-k.nextSeq)) >= reorderSlots {
		k.giveUp()
	}
	s := &k.slots[seq%reorderSlots]
	if s.used {
		k.Duplicates++
		return
	}
	if int16(seq-k.highSeq) < 0 {
		k.Reordered++
	} else {
		k.highSeq = seq
	}
	s.used, s.seq, s.ts, s.arrival = true, seq, ts, now
	s.buf = append(s.buf[:0], payload...)
	k.buffered++
	k.poll(now)
}

// poll releases what can be released at now: packets in order, and, once the oldest waiting
// packet has waited the window, the missing ones before it as lost. It returns when the next
// poll is due (Unix ns), or 0 when nothing waits.
func (k *cutter) poll(now int64) int64 {
	for k.buffered > 0 {
		s := &k.slots[k.nextSeq%reorderSlots]
		if s.used {
			k.release(s)
			continue
		}
		oldest := k.oldest()
		if now-oldest < k.window {
			return oldest + k.window
		}
		k.giveUp()
	}
	return 0
}

// giveUp releases the next packet if it is here, or counts it as lost.
func (k *cutter) giveUp() {
	s := &k.slots[k.nextSeq%reorderSlots]
	if s.used {
		k.release(s)
		return
	}
	k.Lost++
	k.lostRun = true
	k.released <<= 1
	k.nextSeq++
}

func (k *cutter) oldest() int64 {
	var o int64
	for i := range k.slots {
		if s := &k.slots[i]; s.used && (o == 0 || s.arrival < o) {
			o = s.arrival
		}
	}
	return o
}

// flush releases everything buffered, in order, counting the holes as lost.
func (k *cutter) flush() {
	for k.buffered > 0 {
		k.giveUp()
	}
}

func (k *cutter) release(s *slot) {
	s.used = false
	k.buffered--
	k.released = k.released<<1 | 1
	k.nextSeq++
	lost := k.lostRun
	k.lostRun = false
	k.place(s.ts, s.buf, lost, s.arrival)
}

// place puts one in-order packet on the media timeline, filling what is missing before it.
func (k *cutter) place(ts uint32, payload []byte, lost bool, at int64) {
	if len(payload) == 0 {
		return // padding-only packet: no media, no time
	}
	if !k.timeline {
		k.timeline, k.nextTS = true, ts
	}
	k.rules.Accrue(&k.credit, at)
	diff := int32(ts - k.nextTS)
	if k.rules.Jump(int64(diff), &k.credit) {
		if diff > 0 {
			k.Skipped += uint64(uint32(diff) / k.c.samples)
		}
		k.Resyncs++
		k.padAcc(at)
		k.nextTS, diff = ts, 0
	}
	if diff < 0 {
		if k.c.frame == frame.CodecOpus || int(-diff) >= len(payload) {
			k.Late++ // overlaps media already published
			return
		}
		payload = payload[-diff:]
		diff = 0
	}
	if diff > 0 {
		k.fill(uint32(diff), lost, at)
	}
	if k.c.frame == frame.CodecOpus {
		k.placeOpus(payload, at)
		return
	}
	k.appendG711(payload, fillNone, at)
}

// What a G.711 frame was filled with, in increasing precedence.
const (
	fillNone = iota
	fillSilence
	fillLoss
)

// fill publishes n RTP ticks of missing media: gap-filled after loss, codec silence otherwise.
func (k *cutter) fill(n uint32, lost bool, at int64) {
	k.credit.Spend(int64(n))
	if k.c.frame != frame.CodecOpus {
		kind := fillSilence
		if lost {
			kind = fillLoss
		}
		for n > 0 {
			m := min(n, uint32(len(k.silence)))
			k.appendG711(k.silence[:m], kind, at)
			n -= m
		}
		return
	}
	frames := (n + k.c.samples/2) / k.c.samples // rounded: Opus frames sit on packet timestamps
	for i := uint32(0); i < frames; i++ {
		k.emitOpusFill(lost, at)
	}
	k.nextTS += n
}

func (k *cutter) emitOpusFill(lost bool, at int64) {
	k.Frames++
	if lost {
		k.FilledLoss++
		k.emit(nil, frame.FlagGapFilled, time.Unix(0, at))
		return
	}
	k.FilledSilence++
	k.emit(opusSilence, 0, time.Unix(0, at))
}

// placeOpus publishes one Opus packet as 20 ms frames: a 20 ms packet as it is, a packet of
// several 20 ms frames split into one code-0 packet each. Other durations cannot be cut into
// 20 ms Opus packets without transcoding; they count as unsupported and lost.
func (k *cutter) placeOpus(p []byte, at int64) {
	n, fs, err := parseOpus(p, &k.opusFr)
	if err != nil {
		k.Unsupported++
		k.lostRun = true // the next packet's timestamp tells how much to fill
		return
	}
	total := uint32(n * fs)
	switch {
	case total == k.c.samples:
		k.Frames++
		k.emit(p, 0, time.Unix(0, at))
	case uint32(fs) == k.c.samples:
		for i := 0; i < n; i++ {
			k.scratch = append(k.scratch[:0], p[0]&^3)
			k.scratch = append(k.scratch, k.opusFr[i]...)
			k.Frames++
			k.emit(k.scratch, 0, time.Unix(0, at))
		}
	default:
		k.Unsupported++
		for i := uint32(0); i < (total+k.c.samples/2)/k.c.samples; i++ {
			k.emitOpusFill(true, at)
		}
	}
	k.nextTS += total
}

// appendG711 adds samples to the frame being cut and publishes every complete frame.
func (k *cutter) appendG711(p []byte, kind int, at int64) {
	k.nextTS += uint32(len(p))
	for len(p) > 0 {
		m := min(len(p), cap(k.acc)-len(k.acc))
		k.acc = append(k.acc, p[:m]...)
		k.accFill = max(k.accFill, kind)
		p = p[m:]
		if len(k.acc) == cap(k.acc) {
			k.emitAcc(at)
		}
	}
}

func (k *cutter) emitAcc(at int64) {
	var flags frame.Flags
	k.Frames++
	switch k.accFill {
	case fillLoss:
		flags = frame.FlagGapFilled
		k.FilledLoss++
	case fillSilence:
		k.FilledSilence++
	}
	k.emit(k.acc, flags, time.Unix(0, at))
	k.acc, k.accFill = k.acc[:0], fillNone
}

// padAcc completes a partly cut G.711 frame with silence (before a resync).
func (k *cutter) padAcc(at int64) {
	if k.acc == nil || len(k.acc) == 0 {
		return
	}
	n := cap(k.acc) - len(k.acc)
	k.acc = append(k.acc, k.silence[:n]...)
	k.accFill = max(k.accFill, fillSilence)
	k.emitAcc(at)
}
