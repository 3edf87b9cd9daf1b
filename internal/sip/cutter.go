package sip

import "time"

// cutter turns one RTP audio stream of any packet time into gap-free 20 ms frames. It handles
// reordering within a window, duplicates and late packets, lost packets and silence (both become
// gap-filled frames), SSRC changes and timestamp jumps. It owns no goroutine and reads no clock:
// the receiver passes the arrival time in, which keeps it deterministic under test. For every
// codec callrouter accepts on SIP (G.711, G.722) one RTP clock tick is one payload byte.
type cutter struct {
	frameTicks int64 // ticks (and bytes) per 20 ms frame
	window     int64 // reorder window in ticks
	windowDur  time.Duration
	silence    time.Duration // no packet for this long: fill silence in real time
	clock      int64         // ticks per second
	silenceB   byte
	emit       func(payload []byte, gapFilled bool)

	started    bool
	ssrc       uint32
	lastTS     uint32
	extTS      int64 // unwrapped lastTS
	off        int64 // timeline = extended RTP timestamp + off
	pos        int64 // timeline position of the next byte wanted
	lastSeq    uint16
	lastArr    time.Time // arrival of the last packet
	lastArrPos int64     // pos right after the last packet was consumed

	cur     []byte // the frame being filled, len frameTicks
	fill    int
	curGap  bool
	pending [pendingSlots]slot
	np      int // pending slots in use, sorted by t

	stats cutStats
}

const (
	pendingSlots = 16
	maxPacket    = 1500
)

type slot struct {
	t   int64
	n   int
	buf [maxPacket]byte
}

// cutStats counts what the cutter did; the receiver turns them into metrics.
type cutStats struct {
	packets, late, dups, reordered, lost, jumps, ssrcChanges uint64
	framesFilled                                             uint64 // gap-filled frames emitted
}

func newCutter(clock int, window, silenceAfter time.Duration, silence byte, emit func([]byte, bool)) *cutter {
	c := &cutter{clock: int64(clock), frameTicks: int64(clock / 50), windowDur: window, silence: max(silenceAfter, window+frameDur),
		silenceB: silence, emit: emit}
	c.window = int64(window) * c.clock / int64(time.Second)
	c.cur = make([]byte, c.frameTicks)
	return c
}

func (c *cutter) ticks(d time.Duration) int64 { return int64(d) * c.clock / int64(time.Second) }

func (c *cutter) ext(ts uint32) int64 {
	d := int64(int32(ts - c.lastTS))
	e := c.extTS + d
	if d > 0 {
		c.lastTS, c.extTS = ts, e
	}
	return e
}

// push feeds one audio packet that arrived at now.
func (c *cutter) push(now time.Time, seq uint16, ts, ssrc uint32, marker bool, payload []byte) {
	if len(payload) == 0 || len(payload) > maxPacket {
		return
	}
	c.stats.packets++
	if !c.started {
		c.started, c.ssrc, c.lastTS, c.extTS = true, ssrc, ts, 0
		c.off, c.pos, c.lastSeq = 0, 0, seq-1
		c.lastArr, c.lastArrPos = now, 0
	} else if ssrc != c.ssrc {
		c.drain(true)
		c.stats.ssrcChanges++
		c.ssrc, c.lastTS, c.extTS = ssrc, ts, 0
		c.off = c.pos
		c.lastSeq = seq - 1
	}
	t := c.ext(ts) + c.off
	n := int64(len(payload))
	contiguous := seq == c.lastSeq+1
	if int16(seq-c.lastSeq) > 0 {
		c.lastSeq = seq
	}
	switch {
	case t < c.pos && c.filledSince() && t >= c.lastArrPos:
		// The sender's clock fell behind ours while we filled its silence in real time: move
		// its timeline forward rather than dropping its audio.
		c.off += c.pos - t
		t = c.pos
		c.stats.jumps++
	case t+n <= c.pos:
		c.stats.late++
		return
	case t > c.pos:
		gap := t - c.pos
		allowed := c.ticks(now.Sub(c.lastArr)) + c.window + c.frameTicks
		if gap > allowed && c.np == 0 {
			// A timestamp jump the wall clock does not explain: re-anchor, fill nothing.
			c.off -= gap
			t = c.pos
			c.stats.jumps++
		} else if (marker || contiguous) && c.np == 0 {
			c.fillTo(t) // silence suppression (DTX) or a talk spurt: nothing is coming for the gap
		} else {
			c.insert(t, payload)
			c.stats.reordered++
			if c.span() > c.window || c.np == pendingSlots {
				c.drain(true)
			}
			c.lastArr = now
			return
		}
	}
	c.consume(t, payload)
	c.drain(false)
	c.lastArr, c.lastArrPos = now, c.pos
}

// filledSince reports whether frames were filled after the last packet.
func (c *cutter) filledSince() bool { return c.pos > c.lastArrPos }

func (c *cutter) span() int64 {
	if c.np == 0 {
		return 0
	}
	last := &c.pending[c.np-1]
	return last.t + int64(last.n) - c.pos
}

func (c *cutter) insert(t int64, p []byte) {
	i := 0
	for i < c.np && c.pending[i].t < t {
		i++
	}
	if i < c.np && c.pending[i].t == t {
		c.stats.dups++
		return
	}
	if c.np == pendingSlots {
		return
	}
	// shift up by one, keeping the buffers (copy the slot contents)
	for j := c.np; j > i; j-- {
		c.pending[j].t, c.pending[j].n = c.pending[j-1].t, c.pending[j-1].n
		copy(c.pending[j].buf[:c.pending[j].n], c.pending[j-1].buf[:c.pending[j-1].n])
	}
	c.pending[i].t, c.pending[i].n = t, len(p)
	copy(c.pending[i].buf[:], p)
	c.np++
}

// drain consumes pending packets in order; with force it fills the gaps before them instead of
// waiting for the missing packets.
func (c *cutter) drain(force bool) {
	k := 0
	for k < c.np {
		s := &c.pending[k]
		if s.t+int64(s.n) <= c.pos {
			c.stats.late++
			k++
			continue
		}
		if s.t > c.pos {
			if !force {
				break
			}
			c.stats.lost++
			c.fillTo(s.t)
		}
		c.consume(s.t, s.buf[:s.n])
		k++
	}
	if k > 0 {
		for j := k; j < c.np; j++ {
			d, s := &c.pending[j-k], &c.pending[j]
			d.t, d.n = s.t, s.n
			copy(d.buf[:d.n], s.buf[:s.n])
		}
		c.np -= k
	}
}

// consume copies the part of p from c.pos onward into frames.
func (c *cutter) consume(t int64, p []byte) {
	if t < c.pos {
		p = p[c.pos-t:]
	}
	for len(p) > 0 {
		k := copy(c.cur[c.fill:], p)
		c.fill += k
		p = p[k:]
		c.pos += int64(k)
		if c.fill == len(c.cur) {
			c.flushFrame()
		}
	}
}

// fillTo fills silence from c.pos up to timeline position t.
func (c *cutter) fillTo(t int64) {
	for c.pos < t {
		k := min(int64(len(c.cur)-c.fill), t-c.pos)
		for i := c.fill; i < c.fill+int(k); i++ {
			c.cur[i] = c.silenceB
		}
		c.fill += int(k)
		c.pos += k
		c.curGap = true
		if c.fill == len(c.cur) {
			c.flushFrame()
		}
	}
}

func (c *cutter) flushFrame() {
	if c.curGap {
		c.stats.framesFilled++
	}
	c.emit(c.cur, c.curGap)
	c.fill, c.curGap = 0, false
}

// idle is called when no packet has arrived for a while: it gives up on missing packets after
// the reorder window and, once the stream has been silent for the silence threshold, fills
// silence in real time (lagging by the threshold) so the call's frames keep flowing at 50 per
// second through hold, silence suppression and the end of a sender's media.
func (c *cutter) idle(now time.Time) {
	if !c.started {
		return
	}
	since := now.Sub(c.lastArr)
	if c.np > 0 {
		if since >= c.windowDur {
			c.drain(true)
			c.lastArrPos = c.pos
		}
		return
	}
	if since < c.silence {
		return
	}
	target := c.lastArrPos + c.ticks(since-c.silence+frameDur)
	// Whole frames only: the partial frame is completed first.
	for c.pos+int64(len(c.cur)-c.fill) <= target {
		c.fillTo(c.pos + int64(len(c.cur)-c.fill))
	}
}

// finish flushes everything at the end of the stream; a partial last frame is padded.
func (c *cutter) finish() {
	if c.np > 0 {
		c.drain(true)
	}
	if c.fill > 0 {
		c.fillTo(c.pos + int64(len(c.cur)-c.fill))
	}
}

// mediaPos converts an RTP timestamp of the current SSRC into the frame timeline (ticks since
// the first frame); ok is false for another SSRC or before any audio.
func (c *cutter) mediaPos(ts, ssrc uint32) (int64, bool) {
	if !c.started || ssrc != c.ssrc {
		return c.pos, false
	}
	return c.extTS + int64(int32(ts-c.lastTS)) + c.off, true
}

const frameDur = 20 * time.Millisecond
