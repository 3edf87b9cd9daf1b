package ingest

import "runtime"

// ring keeps the most recent marshalled frames of one leg for replay. The frames live in one
// contiguous block of fixed-size slots outside the Go heap (blocks.go): storing a frame allocates
// nothing, the garbage collector has nothing to mark and its heap goal does not count the rings
// (at 1,000 two-leg calls with 5 s rings: 500,000 frames, 96 MB). A frame
// larger than its slot (a burst of a variable-rate codec) is kept in a buffer of its own, which
// that slot then reuses for every later frame, so the ring still allocates nothing once warm.
type ring struct {
	buf    []byte   // len(seqs) slots of stride bytes, off the heap: never referenced beyond the ring's life
	stride int      // bytes per slot
	lens   []int32  // bytes used in each slot; -1: the frame is in big
	big    [][]byte // per slot, the own buffer of a slot that once overflowed; nil until the first one
	seqs   []uint32
	head   int // next slot to write
	n      int

	cleanup runtime.Cleanup // puts buf back when the ring is unreachable; stopped by release
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

func newRing(frames, stride int) *ring {
	r := &ring{stride: stride, lens: make([]int32, frames), seqs: make([]uint32, frames)}
	r.buf, r.cleanup = offHeap(r, frames*stride)
	return r
}

// slot returns an empty buffer with the capacity of the next slot, to marshal the next frame
// into; the caller stores the result back with put.
func (r *ring) slot() []byte {
	if r.big != nil && r.big[r.head] != nil {
		return r.big[r.head][:0]
	}
	off := r.head * r.stride
	return r.buf[off : off : off+r.stride]
}

// put stores b, the frame with sequence seq, in the next slot. b is the buffer slot returned,
// grown by append if the frame outgrew it; a grown one becomes the slot's own buffer.
func (r *ring) put(seq uint32, b []byte) {
	off := r.head * r.stride
	if len(b) > 0 && len(b) <= r.stride && &b[0] == &r.buf[off] {
		r.lens[r.head] = int32(len(b))
	} else {
		if r.big == nil {
			r.big = make([][]byte, len(r.seqs))
		}
		r.big[r.head] = b
		r.lens[r.head] = -1
	}
	r.seqs[r.head] = seq
	r.head = (r.head + 1) % len(r.seqs)
	if r.n < len(r.seqs) {
		r.n++
	}
}

func (r *ring) frame(k int) []byte {
	if r.lens[k] < 0 {
		return r.big[k]
	}
	off := k * r.stride
	return r.buf[off : off+int(r.lens[k])]
}

// each calls f for the stored frames with from <= seq < to, oldest first, until f returns false.
func (r *ring) each(from, to int64, f func(seq uint32, b []byte) bool) {
	start := (r.head - r.n + len(r.seqs)) % len(r.seqs)
	for i := 0; i < r.n; i++ {
		k := (start + i) % len(r.seqs)
		if s := int64(r.seqs[k]); s >= from && s < to && !f(r.seqs[k], r.frame(k)) {
			return
		}
	}
}
