// Package timeline holds the one set of rules by which callrouter turns an RTP stream into
// gap-free 20 ms frames, and the byte-timeline cutter that SIP ingest and the loadtest pcap
// reader use. The WHIP cutter keeps its own sequence-ordered reorder buffer and Opus splitting but
// places packets by the same Rules.
//
// The rules, for every cutter:
//
//   - Reorder window: a packet waits at most the window (at most MaxWindow) for the ones missing
//     before it; after that they are lost and their media is filled with gap-filled frames.
//   - Silence (DTX, silence suppression): a timestamp gap with no sequence gap (or a marker bit)
//     is filled at once with codec silence; it is not loss.
//   - Jumps: a forward gap larger than the stream's Credit (the wall clock's allowance for
//     synthesized media: the window plus one frame to start with, growing with the wall clock
//     up to the stream's max fill, at most MaxFill, spent by every fill) or a backward one larger
//     than the max fill, and a sequence jump beyond ResyncSeq either way, re-anchor the stream:
//     the packet is placed where the frames are, nothing is filled for the gap. This holds
//     whatever the reorder buffer holds: what waits there is released first.
//   - Bound: one packet makes at most MaxFramesPerPacket frames, whatever it carries.
package timeline

import "time"

const (
	// FrameDur is the duration of one frame.
	FrameDur = 20 * time.Millisecond
	// MaxWindow is the longest reorder window a cutter accepts.
	MaxWindow = time.Second
	// MaxFill is the ceiling of a stream's fill Credit: the most missing media one packet may
	// cause to be synthesized.
	MaxFill = 10 * time.Second
	// MaxFillFrames is MaxFill in frames.
	MaxFillFrames = int(MaxFill / FrameDur)
	// ResyncSeq is the sequence jump (either way) past which a stream counts as restarted rather
	// than reordered or lost.
	ResyncSeq = 1000
	// MaxPacket is the largest payload a cutter takes, in bytes.
	MaxPacket = 1500
	// MinClock is the lowest RTP clock rate a cutter takes (G.711's); with it a MaxPacket
	// payload is at most MaxPacketFrames frames of one byte per tick.
	MinClock = 8000
	// MaxPacketFrames bounds the frames one packet's own media makes, a partial frame before it
	// included (G.711: 1500 bytes are 9.4 frames of 160; Opus: at most 120 ms, 6 frames).
	MaxPacketFrames = (MaxPacket+MinClock/50-1)/(MinClock/50) + 1
	// ReorderSlots is the most packets a reorder buffer holds.
	ReorderSlots = 32
	// MaxFramesPerPacket bounds the frames any one packet can cause: the fill one packet may buy
	// (MaxFillFrames), plus, for each packet a push can release from a reorder buffer (the ones
	// it holds and the pushed one), its own media and the rounding of its fill and of a padded
	// partial frame. With the constants above it is 929, 18.6 s of audio.
	MaxFramesPerPacket = MaxFillFrames + (ReorderSlots+1)*(MaxPacketFrames+2)
)

// Rules are a stream's jump and fill rules in RTP clock ticks.
type Rules struct {
	Clock      int64 // ticks per second
	FrameTicks int64 // ticks per frame
	Window     int64 // reorder window in ticks
	WindowDur  time.Duration
	MaxFill    int64 // the Credit's ceiling: most ticks one packet may fill
}

// NewRules returns the rules for a clock rate, a reorder window and a max fill; the window is
// clamped to 0..MaxWindow, the max fill to one frame..MaxFill, the clock to at least MinClock.
func NewRules(clock int, window, maxFill time.Duration) Rules {
	window = min(max(window, 0), MaxWindow)
	maxFill = min(max(maxFill, FrameDur), MaxFill)
	r := Rules{Clock: int64(max(clock, MinClock)), WindowDur: window}
	r.FrameTicks = r.Clock / 50
	r.Window = r.Ticks(window)
	r.MaxFill = r.Ticks(maxFill)
	return r
}

// Ticks converts a duration to clock ticks.
func (r *Rules) Ticks(d time.Duration) int64 { return int64(d) * r.Clock / int64(time.Second) }

// Credit is the media a stream may still synthesize, in ticks: it starts at the window plus
// one frame, grows with the wall clock up to the max fill, and every tick filled spends it. A
// forward gap larger than the credit is a jump. So a stream's filled media never runs ahead of
// the wall clock by more than the max fill, however its packets are spaced.
type Credit struct {
	ticks   int64
	at      int64 // Unix ns of the last accrual
	started bool
}

// Accrue adds the wall-clock time from the last accrual to now (Unix ns); time going backward
// adds nothing.
func (r *Rules) Accrue(c *Credit, now int64) {
	switch {
	case !c.started:
		c.ticks, c.at, c.started = r.Window+r.FrameTicks, now, true
	case now > c.at:
		c.ticks = min(r.MaxFill, c.ticks+r.Ticks(time.Duration(min(now-c.at, int64(MaxFill)))))
		c.at = now
	}
}

// Spend takes n filled ticks from the credit (never below zero).
func (c *Credit) Spend(n int64) { c.ticks = max(0, c.ticks-n) }

// Jump reports whether a packet gap ticks ahead of (negative: behind) the next wanted position
// re-anchors the stream: ahead by more than the credit, or behind by more than the max fill.
func (r *Rules) Jump(gap int64, c *Credit) bool {
	if gap <= 0 {
		return gap < -r.MaxFill
	}
	return gap > min(c.ticks, r.MaxFill)
}

// SeqJump reports whether a sequence number d ahead of (negative: behind) the expected one
// restarts the stream.
func SeqJump(d int16) bool { return d > ResyncSeq || d < -ResyncSeq }
