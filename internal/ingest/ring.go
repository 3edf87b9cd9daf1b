package ingest

import (
	"encoding/binary"
	"runtime"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
)

// ring keeps the most recent frames of one leg for replay. The frames live in one contiguous
// block of fixed-size slots outside the Go heap (blocks.go): storing a frame allocates nothing,
// the garbage collector has nothing to mark and its heap goal does not count the rings (at 1,000
// two-leg calls with 5 s rings: 500,000 frames, 88 MB). A frame larger than its slot (a burst of
// a variable-rate codec) is kept in a buffer of its own, which that slot then reuses for every
// later frame, so the ring still allocates nothing once warm.
//
// A frame is marshalled straight into its slot and published from there (one copy of the
// payload, into memory the call touches anyway), yet a slot keeps only the second half of the
// header and the payload: the first half (version, codec, leg, rate, sequence) is the leg's or
// follows from the slot's place, but for the flags and epoch, which put folds into the second
// half in place of the media timestamp (sequence × samples) and the duration (always 20 ms).
// The slots run downward through the block, so a frame's header begins slotKept bytes below its
// slot, over the last bytes of the slot below: the slot written a ring's length ago, whose frame
// has left the ring (the ring has one slot more than it keeps frames; the bottom slot's header
// goes into the block's first bytes). A slot's frame is rebuilt byte for byte (frame), and a
// two-leg G.711 call's 5 s rings take 88 KB, not 96. The frame is not built apart from its slot:
// a second copy of its bytes costs 75 ns or more a frame while the slot's lines are being fetched
// (docs/loadtest.md, "A ring slot keeps half of the header").
//
// Storing a frame writes its slot and nothing else, a leg's frames follow each other in its
// block, and the ring's own fields are inline in the leg (a frame of a call that has gone cold in
// the cache costs a miss on the call and one on the slot, not one per index array as well).
type ring struct {
	buf    []byte    // the bottom slot's header start, then slots of stride bytes, off the heap: never referenced beyond the ring's life
	big    *[][]byte // per slot, the own buffer of a slot that once overflowed; nil until the first one
	stride int       // bytes per slot: slotKept and the payload
	frames int       // frames kept, in frames+1 slots
	head   int       // next slot to write
	n      int       // frames stored

	cleanup runtime.Cleanup // puts buf back when the ring's owner is unreachable; stopped by release
}

// slotKept is what a slot keeps of a frame's header: its second half, bytes 16 to 31 (media
// timestamp, capture time, duration, payload length), with the epoch in place of the media
// timestamp and the flags in place of the duration's low byte (the high byte zero).
const slotKept = frame.HeaderLen / 2

// ringBlock is the size of the block of a ring of frames frames of up to payload bytes.
func ringBlock(frames, payload int) int {
	return frame.HeaderLen - slotKept + (frames+1)*(slotKept+payload)
}

// makeRing returns a ring of frames frames of up to payload bytes in its block (larger ones get a
// buffer of their own) whose block goes back to its pool once owner (what holds the ring: its
// call) is unreachable.
func makeRing[T any](owner *T, frames, payload int) ring {
	r := ring{stride: slotKept + payload, frames: frames}
	r.buf, r.cleanup = offHeap(owner, ringBlock(frames, payload))
	return r
}

// release gives the ring's block back now, when its call ends, rather than at the next garbage
// collection; the ring then holds nothing and must not be written again.
func (r *ring) release() {
	if r.buf == nil {
		return
	}
	r.cleanup.Stop()
	putBlock(r.buf)
	r.buf, r.big, r.n = nil, nil, 0
}

// at returns the offset in buf where slot k's frame starts: its header's first half, then what
// the slot keeps. Slot k lies below slot k-1.
func (r *ring) at(k int) int { return (r.frames - k) * r.stride }

// slot returns an empty buffer with the capacity of a frame of the next slot, to marshal the next
// frame into with frame.Append; the caller publishes it and then stores it with put.
func (r *ring) slot() []byte {
	if r.big != nil && (*r.big)[r.head] != nil {
		return (*r.big)[r.head][:0]
	}
	off := r.at(r.head)
	return r.buf[off : off : off+frame.HeaderLen-slotKept+r.stride]
}

// put stores b, a frame marshalled into the buffer slot returned (grown by append if the frame
// outgrew it: a grown one becomes the slot's own buffer), as the newest. It rewrites b's header
// into the slot's form, so b must have been published first.
func (r *ring) put(b []byte) {
	off := r.at(r.head)
	if len(b) == 0 || len(b) > frame.HeaderLen-slotKept+r.stride || &b[0] != &r.buf[off] {
		if r.big == nil {
			big := make([][]byte, r.frames+1)
			r.big = &big
		}
		(*r.big)[r.head] = b
	}
	copy(b[16:20], b[8:12]) // the epoch over the media timestamp
	b[28], b[29] = b[1], 0  // the flags over the duration
	if r.head++; r.head == r.frames+1 {
		r.head = 0
	}
	if r.n < r.frames {
		r.n++
	}
}

// legFrame is what makes a stored frame whole: what the header of each of the leg's frames
// repeats.
type legFrame struct {
	codec   frame.Codec
	index   uint8
	rate    uint32
	samples uint32 // per frame
}

// kept returns what slot k keeps of its frame: the second half of its header, then the payload.
func (r *ring) kept(k int) []byte {
	var s []byte
	if r.big != nil && (*r.big)[k] != nil {
		s = (*r.big)[k][frame.HeaderLen-slotKept:]
	} else {
		off := r.at(k) + frame.HeaderLen - slotKept
		s = r.buf[off : off+r.stride]
	}
	n := int(binary.LittleEndian.Uint16(s[14:]))
	if n > len(s)-slotKept {
		panic("ingest: replay ring slot holds no frame") // only frames are put
	}
	return s[:slotKept+n]
}

// size returns the length of the frame in slot k.
func (r *ring) size(k int) int { return frame.HeaderLen - slotKept + len(r.kept(k)) }

// frame appends the frame in slot k, whose sequence is seq, to dst as it was published, with
// flags added to its own.
func (r *ring) frame(dst []byte, k int, seq uint32, l legFrame, flags frame.Flags) []byte {
	s := r.kept(k)
	h := frame.Header{Flags: frame.Flags(s[12]) | flags, Codec: l.codec, Leg: l.index, SampleRate: l.rate,
		Epoch: binary.LittleEndian.Uint32(s[0:]), Seq: seq, MediaTS: seq * l.samples,
		Capture: int64(binary.LittleEndian.Uint64(s[4:])), DurationUS: uint16(frame.Duration / time.Microsecond)}
	b, err := frame.Append(dst, &h, s[slotKept:])
	if err != nil {
		panic("ingest: replay ring slot holds no frame: " + err.Error()) // it was marshalled once
	}
	return b
}

// each calls f for the stored frames with from <= seq < to, oldest first, until f returns false;
// next is the sequence after the newest frame (the ring holds consecutive sequences) and f gets
// the slot of each frame, to pass to frame.
func (r *ring) each(next uint32, from, to int64, f func(seq uint32, k int) bool) {
	start := (r.head - r.n + r.frames + 1) % (r.frames + 1)
	first := next - uint32(r.n)
	for i := 0; i < r.n; i++ {
		seq := first + uint32(i)
		if s := int64(seq); s >= from && s < to && !f(seq, (start+i)%(r.frames+1)) {
			return
		}
	}
}
