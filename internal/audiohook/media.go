package audiohook

import (
	"errors"
	"sync"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/timeline"
)

// chunkBytes is the most bytes of one channel handed to its cutter at once (timeline.MaxPacket
// bounds a push): 80 ms of PCMU, 40 ms of L16.
const chunkBytes = 640

// channels maps AudioHook channel names to leg names.
var channels = map[string]string{"external": "caller", "internal": "agent"}

// errFraming means a binary message does not hold whole samples of every channel.
var errFraming = errors.New("audiohook: binary message is not whole samples of every selected channel")

// mediaIn turns the client's binary messages (any size, samples interleaved in the selected
// channel order) into 20 ms frames per leg. It places each channel's bytes on the stream's
// position (samples sent plus samples discarded) through one timeline.Cutter per channel, whose
// clock counts bytes: a discarded span is then a timestamp gap the cutter fills with gap-filled
// silence. The cutter's clock is the stream's own (the time of "opened" plus the position, or
// the wall clock when that is later): over TCP nothing is lost or reordered, and a span the
// client reports discarded is explained media, so its fill credit covers it up to
// timeline.MaxFill; a longer one re-anchors the timeline (the session bounds how far the position
// may run ahead of the wall clock).
type mediaIn struct {
	mu      sync.Mutex // the reader pushes, the session's watcher fills silence (idle)
	bps     int        // bytes per sample
	rate    int
	cutters []*timeline.Cutter
	split   [][]byte
	seq     uint16
	pos     int64 // stream position in samples per channel
	start   time.Time
	done    bool // finished: nothing more is cut or filled
}

func newMediaIn(m media, start time.Time, emit func(leg int, payload []byte, gap bool)) *mediaIn {
	in := &mediaIn{bps: 1, rate: m.Rate, start: start}
	silence := byte(0xff) // μ-law silence
	if m.Format == "L16" {
		in.bps, silence = 2, 0
	}
	for i := range m.Channels {
		leg := i
		in.cutters = append(in.cutters, timeline.New(timeline.Config{Clock: m.Rate * in.bps, MaxFill: timeline.MaxFill, Silence: silence,
			SilenceAfter: silenceAfter,
			Emit:         func(p []byte, gap bool) { emit(leg, p, gap) }}))
		in.split = append(in.split, nil)
	}
	return in
}

// codec returns the frame codec of a selected format.
func codecOf(m media) frame.Codec {
	if m.Format == "L16" {
		return frame.CodecL16
	}
	return frame.CodecPCMU
}

// silenceAfter is how long a stream may send no audio (Genesys sends every 200 ms) before its
// frames are filled with gap-filled silence in real time (published flagged paused while the
// stream is paused, see session.onPaused): a paused stream keeps its call alive
// (the worker reaps a call without frames) the way a SIP call on hold does.
const silenceAfter = time.Second

// idle fills silence in real time once the stream has sent nothing for silenceAfter; audio that
// comes after it (resumed, at the position the pause began) is placed after the fill.
func (in *mediaIn) idle(now time.Time) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.done {
		return
	}
	for _, c := range in.cutters {
		c.Idle(now)
	}
}

// push feeds one binary message that arrived at now.
func (in *mediaIn) push(now time.Time, b []byte) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.done {
		return nil
	}
	n := len(in.cutters)
	stride := n * in.bps
	if len(b)%stride != 0 {
		return errFraming
	}
	per := len(b) / n
	for ch := 0; ch < n; ch++ {
		dst := in.split[ch][:0]
		for i := ch * in.bps; i < len(b); i += stride {
			dst = append(dst, b[i:i+in.bps]...)
		}
		in.split[ch] = dst
	}
	base := in.pos * int64(in.bps)
	if at := in.start.Add(in.duration()); at.After(now) {
		now = at
	}
	for off := 0; off < per; off += chunkBytes {
		end := min(off+chunkBytes, per)
		in.seq++
		for ch, c := range in.cutters {
			c.Push(now, in.seq, uint32(base+int64(off)), 0, false, in.split[ch][off:end])
		}
	}
	in.pos += int64(per / in.bps)
	return nil
}

// ahead returns the position after n more bytes of a message.
func (in *mediaIn) after(n int) time.Duration {
	return time.Duration(in.pos+int64(n/(in.bps*len(in.cutters)))) * time.Second / time.Duration(in.rate)
}

// discard moves the stream position to the end of a discarded span; the next audio is placed
// after it.
func (in *mediaIn) discard(to int64) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if to > in.pos {
		in.pos = to
	}
}

// finish flushes the partial last frame of every leg.
func (in *mediaIn) finish() {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.done {
		return
	}
	in.done = true
	for _, c := range in.cutters {
		c.Finish()
	}
}

// stats sums what the cutters did.
func (in *mediaIn) stats() (filled, jumps uint64) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, c := range in.cutters {
		filled += c.Stats.FramesFilled
		jumps += c.Stats.Jumps
	}
	return filled, jumps
}

// duration is the stream position as a duration.
func (in *mediaIn) duration() time.Duration {
	return time.Duration(in.pos) * time.Second / time.Duration(in.rate)
}

// position is duration for a goroutine other than the one that pushes (a session that took the
// stream over, or the one it took it from).
func (in *mediaIn) position() time.Duration {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.duration()
}

// samples converts a duration to samples.
func (in *mediaIn) samples(d time.Duration) int64 {
	return int64(d) * int64(in.rate) / int64(time.Second)
}
