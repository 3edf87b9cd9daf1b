package loadtest

import (
	"io"
	"net"

	"golang.org/x/net/ipv4"
)

// rtpBatchMax is how many packets one sendmmsg carries at most.
const rtpBatchMax = 64

// rtpBatch gathers the RTP packets a pacer shard sends on one socket during a tick and sends
// them with one sendmmsg per rtpBatchMax packets (ipv4.PacketConn.WriteBatch) instead of one
// sendto each: on this machine's virtualised kernel a system call costs more than the UDP send
// itself. Its buffers are reused, so a packet costs no allocation. Only the shard's goroutine
// uses it.
type rtpBatch struct {
	pc   *ipv4.PacketConn
	msgs []ipv4.Message
	bufs [][]byte
	legs []*rtpLeg // whose packet each message is, to charge a failed send to
	n    int
}

func newRTPBatch(conn *net.UDPConn) *rtpBatch {
	b := &rtpBatch{pc: ipv4.NewPacketConn(conn), msgs: make([]ipv4.Message, rtpBatchMax),
		bufs: make([][]byte, rtpBatchMax), legs: make([]*rtpLeg, rtpBatchMax)}
	for i := range b.msgs {
		b.bufs[i] = make([]byte, 0, 1500)
		b.msgs[i].Buffers = make([][]byte, 1)
	}
	return b
}

// slot returns the empty buffer the next packet is written into.
func (b *rtpBatch) slot() []byte { return b.bufs[b.n][:0] }

// push queues pkt (written into slot's buffer, or any other) for l's destination, sending the
// batch when it is full.
func (b *rtpBatch) push(l *rtpLeg, pkt []byte) {
	if len(pkt) > cap(b.bufs[b.n]) {
		b.bufs[b.n] = make([]byte, 0, len(pkt))
	}
	p := append(b.bufs[b.n][:0], pkt...) // a no-op copy when pkt was built in slot
	b.bufs[b.n] = p
	b.msgs[b.n].Buffers[0] = p
	b.msgs[b.n].Addr = l.dst
	b.legs[b.n] = l
	b.n++
	if b.n == len(b.msgs) {
		b.flush()
	}
}

// flush sends what is queued. A packet the kernel refuses is skipped and charged to its leg
// (rtpLeg.fail), whose next Send then fails; the rest still go.
func (b *rtpBatch) flush() {
	for off := 0; off < b.n; {
		k, err := b.pc.WriteBatch(b.msgs[off:b.n], 0)
		k = max(k, 0) // -1 with an error
		for _, l := range b.legs[off : off+k] {
			l.t.sent.Add(1)
		}
		off += k
		if off < b.n && (err != nil || k == 0) {
			if err == nil {
				err = io.ErrShortWrite
			}
			b.legs[off].fail(err)
			off++
		}
	}
	for i := range b.n {
		b.msgs[i].Addr, b.legs[i] = nil, nil
	}
	b.n = 0
}

// rtpBatches are a shard's batches, one per socket its calls send on.
type rtpBatches struct {
	by map[*net.UDPConn]*rtpBatch
}

func (t *rtpBatches) get(c *net.UDPConn) *rtpBatch {
	if t.by == nil {
		t.by = map[*net.UDPConn]*rtpBatch{}
	}
	b := t.by[c]
	if b == nil {
		b = newRTPBatch(c)
		t.by[c] = b
	}
	return b
}

func (t *rtpBatches) flush() {
	for _, b := range t.by {
		if b.n > 0 {
			b.flush()
		}
	}
}
