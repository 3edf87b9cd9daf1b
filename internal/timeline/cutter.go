package timeline

import "time"

// Config describes a stream for a Cutter.
type Config struct {
	Clock        int           // RTP clock rate; one tick is one payload byte
	Window       time.Duration // reorder window
	SilenceAfter time.Duration // no packet for this long: Idle fills silence in real time
	MaxFill      time.Duration // most media one packet may fill (clamped to MaxFill)
	Silence      byte          // the codec's silence byte
	// Emit receives every frame, FrameTicks bytes, valid only during the call; gapFilled is set
	// when any of it was synthesized.
	Emit func(payload []byte, gapFilled bool)
}

// Cutter turns one RTP audio stream of any packet time, with one byte per clock tick (G.711,
// G.722), into gap-free 20 ms frames under the package's Rules. It reorders by timestamp within
// the window, drops duplicates and late packets, fills lost packets and silence (both flagged
// gap-filled), follows SSRC changes and re-anchors on jumps. It owns no goroutine and reads no
// clock: the caller passes arrival times in. It is not safe for concurrent use and allocates
// nothing per packet. One Push makes at most (MaxFill + window + 2×MaxPacket ticks) / FrameTicks
// + 3 frames (572 at 8 kHz): the fill its credit allows, the pending packets (which span at most
// the window, or at most an allowed gap and a packet), and its own payload.
type Cutter struct {
	Rules
	silence  time.Duration
	silenceB byte
	emit     func(payload []byte, gapFilled bool)

	started    bool
	ssrc       uint32
	lastTS     uint32
	extTS      int64 // unwrapped lastTS
	off        int64 // timeline = extended RTP timestamp + off
	pos        int64 // timeline position of the next byte wanted
	lastSeq    uint16
	lastArr    time.Time // arrival of the last packet
	lastArrPos int64     // pos right after the last packet was consumed
	credit     Credit

	cur     []byte // the frame being filled, len FrameTicks
	fill    int
	curGap  bool
	pending [pendingSlots]slot
	np      int // pending slots in use, sorted by t

	Stats Stats
}

// pendingSlots is the byte cutter's reorder buffer size in packets (at most ReorderSlots).
const pendingSlots = 16

type slot struct {
	t   int64
	n   int
	buf [MaxPacket]byte
}

// Stats counts what a Cutter did.
type Stats struct {
	Packets, Late, Dups, Reordered, Lost, Jumps, SSRCChanges uint64
	FramesFilled                                             uint64 // gap-filled frames emitted
}

// New returns a Cutter for cfg.
func New(cfg Config) *Cutter {
	c := &Cutter{Rules: NewRules(cfg.Clock, cfg.Window, cfg.MaxFill), silenceB: cfg.Silence, emit: cfg.Emit}
	c.silence = max(cfg.SilenceAfter, c.WindowDur+FrameDur)
	c.cur = make([]byte, c.FrameTicks)
	return c
}

// Pos is the timeline position (ticks since the first frame) of the next byte wanted.
func (c *Cutter) Pos() int64 { return c.pos }

// restart starts a new timeline for ts at the current position, releasing what waits first.
func (c *Cutter) restart(seq uint16, ts uint32) {
	c.drain(true)
	c.lastTS, c.extTS, c.off = ts, 0, c.pos
	c.lastSeq = seq - 1
}

// Push feeds one audio packet that arrived at now.
func (c *Cutter) Push(now time.Time, seq uint16, ts, ssrc uint32, marker bool, payload []byte) {
	if len(payload) == 0 || len(payload) > MaxPacket {
		return
	}
	c.Stats.Packets++
	c.Accrue(&c.credit, now.UnixNano())
	switch {
	case !c.started:
		c.started, c.ssrc = true, ssrc
		c.lastTS, c.extTS, c.off, c.pos, c.lastSeq = ts, 0, 0, 0, seq-1
		c.lastArr, c.lastArrPos = now, 0
	case ssrc != c.ssrc:
		c.Stats.SSRCChanges++
		c.ssrc = ssrc
		c.restart(seq, ts)
	case SeqJump(int16(seq - c.lastSeq)):
		c.Stats.Jumps++
		c.restart(seq, ts)
	}
	d := int64(int32(ts - c.lastTS))
	t := c.extTS + d + c.off
	n := int64(len(payload))
	switch {
	case t == c.pos: // in order: the steady path
	case t < c.pos && c.filledSince() && t >= c.lastArrPos:
		// The sender's clock fell behind ours while we filled its silence in real time: move
		// its timeline forward rather than dropping its audio.
		c.off += c.pos - t
		t = c.pos
		c.Stats.Jumps++
	case c.Jump(t-c.pos, &c.credit):
		// A jump the wall clock does not explain: re-anchor, fill nothing, whatever waits.
		c.Stats.Jumps++
		c.restart(seq, ts)
		d, t = 0, c.pos
	}
	if d > 0 {
		c.lastTS, c.extTS = ts, c.extTS+d
	}
	contiguous := seq == c.lastSeq+1
	if int16(seq-c.lastSeq) > 0 {
		c.lastSeq = seq
	}
	switch {
	case t+n <= c.pos:
		c.Stats.Late++
		return
	case t > c.pos:
		if (marker || contiguous) && c.np == 0 {
			c.fillTo(t) // silence suppression (DTX) or a talk spurt: nothing is coming for the gap
			break
		}
		c.insert(t, payload)
		c.Stats.Reordered++
		if c.span() > c.Window || c.np == pendingSlots {
			c.drain(true)
		}
		c.lastArr = now
		return
	}
	c.consume(t, payload)
	c.drain(false)
	c.lastArr, c.lastArrPos = now, c.pos
}

// filledSince reports whether frames were filled after the last packet.
func (c *Cutter) filledSince() bool { return c.pos > c.lastArrPos }

func (c *Cutter) span() int64 {
	if c.np == 0 {
		return 0
	}
	last := &c.pending[c.np-1]
	return last.t + int64(last.n) - c.pos
}

func (c *Cutter) insert(t int64, p []byte) {
	i := 0
	for i < c.np && c.pending[i].t < t {
		i++
	}
	if i < c.np && c.pending[i].t == t {
		c.Stats.Dups++
		return
	}
	if c.np == pendingSlots {
		return
	}
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
func (c *Cutter) drain(force bool) {
	k := 0
	for k < c.np {
		s := &c.pending[k]
		if s.t+int64(s.n) <= c.pos {
			c.Stats.Late++
			k++
			continue
		}
		if s.t > c.pos {
			if !force {
				break
			}
			c.Stats.Lost++
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
func (c *Cutter) consume(t int64, p []byte) {
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

// fillTo fills silence from c.pos up to timeline position t, spending the credit.
func (c *Cutter) fillTo(t int64) {
	if t > c.pos {
		c.credit.Spend(t - c.pos)
	}
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

func (c *Cutter) flushFrame() {
	if c.curGap {
		c.Stats.FramesFilled++
	}
	c.emit(c.cur, c.curGap)
	c.fill, c.curGap = 0, false
}

// Idle is called when no packet has arrived for a while: it gives up on missing packets after
// the reorder window and, once the stream has been silent for the silence threshold, fills
// silence in real time (lagging by the threshold) so the frames keep flowing at 50 per second
// through hold, silence suppression and the end of a sender's media.
func (c *Cutter) Idle(now time.Time) {
	if !c.started {
		return
	}
	c.Accrue(&c.credit, now.UnixNano())
	since := now.Sub(c.lastArr)
	if c.np > 0 {
		if since >= c.WindowDur {
			c.drain(true)
			c.lastArrPos = c.pos
		}
		return
	}
	if since < c.silence {
		return
	}
	target := c.lastArrPos + c.Ticks(since-c.silence+FrameDur)
	// Whole frames only: the partial frame is completed first.
	for c.pos+int64(len(c.cur)-c.fill) <= target {
		c.fillTo(c.pos + int64(len(c.cur)-c.fill))
	}
}

// IdleDue returns the time before which Idle has nothing to do: the end of the reorder window
// while packets wait, else the silence threshold after the last packet. ok is false before the
// first packet (Idle does nothing until a Push). The answer changes only with Push and Idle, so a
// caller that sweeps many streams can note it after each and skip the streams not yet due.
func (c *Cutter) IdleDue() (due time.Time, ok bool) {
	if !c.started {
		return time.Time{}, false
	}
	if c.np > 0 {
		return c.lastArr.Add(c.WindowDur), true
	}
	return c.lastArr.Add(c.silence), true
}

// Finish flushes everything at the end of the stream; a partial last frame is padded.
func (c *Cutter) Finish() {
	if c.np > 0 {
		c.drain(true)
	}
	if c.fill > 0 {
		c.fillTo(c.pos + int64(len(c.cur)-c.fill))
	}
}

// MediaPos converts an RTP timestamp of the current SSRC into the frame timeline (ticks since
// the first frame); ok is false for another SSRC or before any audio.
func (c *Cutter) MediaPos(ts, ssrc uint32) (int64, bool) {
	if !c.started || ssrc != c.ssrc {
		return c.pos, false
	}
	return c.extTS + int64(int32(ts-c.lastTS)) + c.off, true
}
