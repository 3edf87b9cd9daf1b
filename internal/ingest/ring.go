package ingest

// ring keeps the most recent marshalled frames of one leg for replay. Slot buffers are reused, so
// after warm-up storing a frame allocates nothing.
type ring struct {
	slots [][]byte
	seqs  []uint32
	head  int // next slot to write
	n     int
}

func newRing(frames int) *ring {
	return &ring{slots: make([][]byte, frames), seqs: make([]uint32, frames)}
}

// slot returns the buffer to marshal the frame with sequence seq into; the caller stores the
// result back with put.
func (r *ring) slot() []byte { return r.slots[r.head][:0] }

func (r *ring) put(seq uint32, b []byte) {
	r.slots[r.head] = b
	r.seqs[r.head] = seq
	r.head = (r.head + 1) % len(r.slots)
	if r.n < len(r.slots) {
		r.n++
	}
}

// each calls f for the stored frames with from <= seq < to, oldest first.
func (r *ring) each(from, to int64, f func(b []byte)) {
	start := (r.head - r.n + len(r.slots)) % len(r.slots)
	for i := 0; i < r.n; i++ {
		k := (start + i) % len(r.slots)
		if s := int64(r.seqs[k]); s >= from && s < to {
			f(r.slots[k])
		}
	}
}
