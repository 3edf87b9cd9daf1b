package ingest

import (
	"runtime"

	"github.com/callrouter/callrouter/internal/frame"
)

// ring keeps the most recent marshalled frames of one leg for replay. The frames live in one
// contiguous block of fixed-size slots outside the Go heap (blocks.go): storing a frame allocates
// nothing, the garbage collector has nothing to mark and its heap goal does not count the rings
// (at 1,000 two-leg calls with 5 s rings: 500,000 frames, 96 MB). A frame
// larger than its slot (a burst of a variable-rate codec) is kept in a buffer of its own, which
// that slot then reuses for every later frame, so the ring still allocates nothing once warm.
//
// A slot holds a frame as frame.Append wrote it, so the ring keeps no index beside the block: a
// stored frame's length and sequence are in its header. Storing a frame writes its slot and
// nothing else, a leg's frames follow each other in its block, and the ring's own fields are
// inline in the leg (a frame of a call that has gone cold in the cache costs a miss on the call
// and one on the slot, not one per index array as well).
type ring struct {
	buf    []byte    // frames slots of stride bytes, off the heap: never referenced beyond the ring's life
	big    *[][]byte // per slot, the own buffer of a slot that once overflowed; nil until the first one
	stride int       // bytes per slot
	frames int       // slots
	head   int       // next slot to write
	n      int       // frames stored

	cleanup runtime.Cleanup // puts buf back when the ring's owner is unreachable; stopped by release
}

// makeRing returns a ring of frames slots of stride bytes whose block goes back to its pool once
// owner (what holds the ring: its call) is unreachable.
func makeRing[T any](owner *T, frames, stride int) ring {
	r := ring{stride: stride, frames: frames}
	r.buf, r.cleanup = offHeap(owner, frames*stride)
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

// slot returns an empty buffer with the capacity of the next slot, to marshal the next frame
// into with frame.Append; the caller stores the result back with put.
func (r *ring) slot() []byte {
	if r.big != nil && (*r.big)[r.head] != nil {
		return (*r.big)[r.head][:0]
	}
	off := r.head * r.stride
	return r.buf[off : off : off+r.stride]
}

// put stores b, a frame marshalled into the buffer slot returned (grown by append if the frame
// outgrew it: a grown one becomes the slot's own buffer), as the newest.
func (r *ring) put(b []byte) {
	off := r.head * r.stride
	if len(b) == 0 || len(b) > r.stride || &b[0] != &r.buf[off] {
		if r.big == nil {
			big := make([][]byte, r.frames)
			r.big = &big
		}
		(*r.big)[r.head] = b
	}
	if r.head++; r.head == r.frames {
		r.head = 0
	}
	if r.n < r.frames {
		r.n++
	}
}

// frame returns the frame in slot k and its header.
func (r *ring) frame(k int) (frame.Header, []byte) {
	var b []byte
	if r.big != nil && (*r.big)[k] != nil {
		b = (*r.big)[k]
	} else {
		off := k * r.stride
		b = r.buf[off : off+r.stride]
	}
	var h frame.Header
	p, err := h.Unmarshal(b)
	if err != nil {
		panic("ingest: replay ring slot holds no frame: " + err.Error()) // only frames are put
	}
	return h, b[:frame.HeaderLen+len(p)]
}

// each calls f for the stored frames with from <= seq < to, oldest first, until f returns false.
func (r *ring) each(from, to int64, f func(seq uint32, b []byte) bool) {
	start := (r.head - r.n + r.frames) % r.frames
	for i := 0; i < r.n; i++ {
		h, b := r.frame((start + i) % r.frames)
		if s := int64(h.Seq); s >= from && s < to && !f(h.Seq, b) {
			return
		}
	}
}
