package sip

import (
	"math"
	"time"

	"github.com/callrouter/callrouter/internal/timeline"
)

// cutter turns one RTP audio stream into gap-free 20 ms frames by the rules of package timeline
// (reorder window, loss and silence fill, jumps, the bound on frames per packet). For every codec
// callrouter accepts on SIP (G.711, G.722) one RTP clock tick is one payload byte.
type cutter struct {
	tl         *timeline.Cutter
	frameTicks int64 // ticks (and bytes) per 20 ms frame
}

const (
	maxPacket = timeline.MaxPacket
	frameDur  = timeline.FrameDur
)

// cutStats counts what the cutter did; the receiver turns them into metrics.
type cutStats = timeline.Stats

func newCutter(clock int, window, silenceAfter time.Duration, silence byte, emit func([]byte, bool)) *cutter {
	tl := timeline.New(timeline.Config{Clock: clock, Window: window, SilenceAfter: silenceAfter,
		MaxFill: timeline.MaxFill, Silence: silence, Emit: emit})
	return &cutter{tl: tl, frameTicks: tl.FrameTicks}
}

// push feeds one audio packet that arrived at now.
func (c *cutter) push(now time.Time, seq uint16, ts, ssrc uint32, marker bool, payload []byte) {
	c.tl.Push(now, seq, ts, ssrc, marker, payload)
}

// idle is called when no packet has arrived for a while (see timeline.Cutter.Idle).
func (c *cutter) idle(now time.Time) { c.tl.Idle(now) }

// idleDue is when idle next has work (monoNanos; never before the first packet): it changes only
// with push and idle.
func (c *cutter) idleDue() int64 {
	due, ok := c.tl.IdleDue()
	if !ok {
		return math.MaxInt64
	}
	return monoNanos(due)
}

// monoBase anchors monoNanos.
var monoBase = time.Now()

// monoNanos is t on the monotonic clock as an integer that fits an atomic (nanoseconds since the
// process's start), immune to wall-clock steps.
func monoNanos(t time.Time) int64 { return int64(t.Sub(monoBase)) }

// finish flushes everything at the end of the stream; a partial last frame is padded.
func (c *cutter) finish() { c.tl.Finish() }

// mediaPos converts an RTP timestamp of the current SSRC into the frame timeline.
func (c *cutter) mediaPos(ts, ssrc uint32) (int64, bool) { return c.tl.MediaPos(ts, ssrc) }

// stats returns what the cutter did so far.
func (c *cutter) stats() cutStats { return c.tl.Stats }
