package timeline

import (
	"bytes"
	"testing"
	"time"
)

// rig feeds a Cutter and counts the frames each push makes.
type rig struct {
	c      *Cutter
	frames [][]byte
	filled []bool
	now    time.Time
}

func newRig() *rig {
	r := &rig{now: time.Unix(1000, 0)}
	r.c = New(Config{Clock: 8000, Window: 60 * time.Millisecond, SilenceAfter: 400 * time.Millisecond,
		MaxFill: MaxFill, Silence: 0xD5, Emit: func(p []byte, gap bool) {
			r.frames = append(r.frames, append([]byte(nil), p...))
			r.filled = append(r.filled, gap)
		}})
	return r
}

// push sends a 20 ms packet of byte b and returns how many frames it made.
func (r *rig) push(seq uint16, ts uint32, b byte) int {
	before := len(r.frames)
	r.c.Push(r.now, seq, ts, 1, false, bytes.Repeat([]byte{b}, 160))
	return len(r.frames) - before
}

// TestHeldBackPacketThenTimestampJump is the attack: one packet is held back so that the next
// waits in the reorder buffer, then a packet 2^30 ticks ahead arrives. Before the jump rule held
// whatever the buffer held, that packet filled 2^30 ticks (6.7 million frames).
func TestHeldBackPacketThenTimestampJump(t *testing.T) {
	for _, name := range []string{"ahead", "behind"} {
		t.Run(name, func(t *testing.T) {
			r := newRig()
			seq, ts := uint16(0), uint32(0)
			for i := 0; i < 5; i++ {
				r.push(seq, ts, 1)
				seq, ts = seq+1, ts+160
				r.now = r.now.Add(20 * time.Millisecond)
			}
			// seq is held back; seq+1 waits for it.
			r.push(seq+1, ts+160, 2)
			r.now = r.now.Add(20 * time.Millisecond)
			jump := ts + 320 + 1<<30
			if name == "behind" {
				jump = ts + 320 - 1<<30
			}
			if n := r.push(seq+2, jump, 3); n > MaxFramesPerPacket {
				t.Fatalf("one packet made %d frames, bound %d", n, MaxFramesPerPacket)
			}
			if r.c.Stats.Jumps != 1 {
				t.Errorf("jumps %d, want 1", r.c.Stats.Jumps)
			}
			// The stream keeps flowing from the new anchor, one frame per packet.
			for i := 3; i < 13; i++ {
				r.now = r.now.Add(20 * time.Millisecond)
				if n := r.push(seq+uint16(i), jump+uint32(160*(i-2)), byte(i)); n != 1 {
					t.Fatalf("packet %d after the jump made %d frames", i, n)
				}
			}
			if last := r.frames[len(r.frames)-1]; last[0] != 12 || len(r.frames) > 5+2+1+10+1 {
				t.Errorf("%d frames, last holds %d", len(r.frames), last[0])
			}
		})
	}
}

func TestSequenceJumpRestarts(t *testing.T) {
	r := newRig()
	r.push(0, 0, 1)
	r.now = r.now.Add(20 * time.Millisecond)
	r.push(1, 160, 2)
	r.now = r.now.Add(20 * time.Millisecond)
	if n := r.push(30000, 320, 3); n != 1 || r.c.Stats.Jumps != 1 {
		t.Fatalf("restart: %d frames, jumps %d", n, r.c.Stats.Jumps)
	}
	r.now = r.now.Add(20 * time.Millisecond)
	if n := r.push(30001, 480, 4); n != 1 || r.c.Stats.Lost != 0 {
		t.Fatalf("after restart: %d frames, lost %d", n, r.c.Stats.Lost)
	}
}

// TestFillNeedsWallClock: a gap the credit (the wall clock) explains is filled, a larger one
// re-anchors.
func TestFillNeedsWallClock(t *testing.T) {
	r := newRig()
	r.push(0, 0, 1)
	r.now = r.now.Add(500 * time.Millisecond)
	// 20 frames of DTX after 500 ms: the credit is 60 + 20 + 500 ms; filled as silence, 180 left.
	if n := r.push(1, 160*21, 2); n != 21 || !r.filled[1] || r.c.Stats.Jumps != 0 {
		t.Fatalf("DTX: %d frames, jumps %d", n, r.c.Stats.Jumps)
	}
	r.now = r.now.Add(20 * time.Millisecond)
	// 50 frames ahead after 20 ms more: beyond the 200 ms of credit, re-anchored.
	if n := r.push(2, 160*72, 3); n != 1 || r.c.Stats.Jumps != 1 {
		t.Fatalf("jump: %d frames, jumps %d", n, r.c.Stats.Jumps)
	}
	// Packets faster than real time cannot buy fill one after the other: each 20 ms packet
	// claims 3 frames of DTX; the credit pays for it while it lasts, then they re-anchor.
	filled := 0
	for i := 0; i < 100; i++ {
		r.now = r.now.Add(20 * time.Millisecond)
		filled += r.push(uint16(3+i), 160*72+uint32(160*4*(i+1)), 4) - 1
	}
	if filled > 200/20+100 {
		t.Errorf("%d frames filled in 2 s", filled)
	}
}

// TestIdleDue: IdleDue is the first moment Idle acts: the reorder window's end while a packet
// waits for a missing one, the silence threshold after the last packet otherwise; an Idle a
// moment before it emits nothing.
func TestIdleDue(t *testing.T) {
	r := newRig()
	if _, ok := r.c.IdleDue(); ok {
		t.Fatal("due before the first packet")
	}
	r.push(0, 0, 1)
	check := func(wait time.Duration, pending bool) {
		t.Helper()
		due, ok := r.c.IdleDue()
		if !ok || !due.Equal(r.now.Add(wait)) {
			t.Fatalf("due %v, %v; want %v after the last packet", due, ok, wait)
		}
		before := len(r.frames)
		r.c.Idle(due.Add(-time.Microsecond))
		if len(r.frames) != before || (r.c.np > 0) != pending {
			t.Fatalf("Idle before due: %d frames, %d pending", len(r.frames)-before, r.c.np)
		}
		r.c.Idle(due)
		if len(r.frames) == before {
			t.Fatal("Idle at due did nothing")
		}
	}
	check(400*time.Millisecond, false)
	r.now = r.now.Add(time.Second)
	r.push(30, 30*160, 1) // sequence 29 is missing: it waits
	r.push(32, 32*160, 1)
	check(60*time.Millisecond, true)
}

func TestZeroAllocs(t *testing.T) {
	c := New(Config{Clock: 8000, Window: 60 * time.Millisecond, SilenceAfter: 400 * time.Millisecond, Silence: 0xD5,
		Emit: func([]byte, bool) {}})
	p := make([]byte, 240)
	now := time.Unix(0, 0)
	var seq uint16
	var ts uint32
	allocs := testing.AllocsPerRun(1000, func() {
		// Every fourth packet is held back one slot: the reorder path too.
		if seq%4 == 1 {
			c.Push(now, seq+1, ts+240, 1, false, p)
			c.Push(now, seq, ts, 1, false, p)
		} else if seq%4 != 2 {
			c.Push(now, seq, ts, 1, false, p)
		}
		c.Idle(now)
		seq++
		ts += 240
		now = now.Add(30 * time.Millisecond)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per packet, want 0", allocs)
	}
}

func BenchmarkCutter30ms(b *testing.B) {
	c := New(Config{Clock: 8000, Window: 60 * time.Millisecond, SilenceAfter: 400 * time.Millisecond, Silence: 0xD5,
		Emit: func([]byte, bool) {}})
	p := make([]byte, 240)
	now := time.Unix(0, 0)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		c.Push(now, uint16(i), uint32(240*i), 1, false, p)
		now = now.Add(30 * time.Millisecond)
	}
	if b.N > 0 && testing.AllocsPerRun(1, func() { c.Push(now, 0, 0, 1, false, p) }) != 0 {
		b.Fatal("allocates per packet")
	}
}

// FuzzCutter feeds arbitrary packets (sequence, timestamp, SSRC, marker, length, arrival) into
// a Cutter and checks the bound and the frames: at most MaxFramesPerPacket frames per push, every
// frame FrameTicks bytes, and the frames gap-free: every byte of the timeline is emitted once, so
// the frames out times FrameTicks equal the position reached; an Idle before IdleDue does nothing.
func FuzzCutter(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 160, 20, 0, 1, 0, 0, 0, 160, 20, 0, 3, 0x40, 0, 0, 160, 1, 0, 2, 0, 0, 0, 160, 20})
	f.Add([]byte{0, 0, 0, 0, 0, 160, 20, 0, 2, 0, 1, 0, 160, 20, 0, 3, 0x40, 0, 0, 160, 20})
	// The attack: the second packet waits for a missing one, the third jumps 2^30 ticks.
	f.Add([]byte{0, 0, 0, 0, 0, 80, 20, 0, 2, 0, 0, 2, 27, 20, 0, 3, 0x40, 0, 0, 27, 20})
	f.Fuzz(func(t *testing.T, data []byte) {
		frames := 0
		c := New(Config{Clock: 8000, Window: 60 * time.Millisecond, SilenceAfter: 400 * time.Millisecond, Silence: 0xD5,
			Emit: func(p []byte, _ bool) {
				if len(p) != 160 {
					t.Fatalf("frame of %d bytes", len(p))
				}
				frames++
			}})
		buf := make([]byte, MaxPacket)
		now := time.Unix(0, 0)
		for d := data; len(d) >= 7; d = d[7:] {
			seq := uint16(d[0])<<8 | uint16(d[1])
			ts := uint32(d[2])<<24 | uint32(d[3])<<16 | uint32(d[4])<<8
			ssrc := uint32(d[2] >> 7)
			n := int(d[5]) * 6
			now = now.Add(time.Duration(d[6]) * time.Millisecond)
			before := frames
			c.Push(now, seq, ts, ssrc, d[4]&1 != 0, buf[:min(n, MaxPacket)])
			own := (c.MaxFill+c.Window+2*MaxPacket)/c.FrameTicks + 3 // the byte cutter's bound
			if got := frames - before; got > MaxFramesPerPacket || int64(got) > own {
				t.Fatalf("one packet made %d frames, bound %d (this cutter %d)", got, MaxFramesPerPacket, own)
			}
			if d[6]&0x80 != 0 {
				at := now.Add(time.Duration(d[6]&0x7F) * 10 * time.Millisecond)
				due, ok := c.IdleDue()
				early := !ok || at.Before(due)
				before, np := frames, c.np
				c.Idle(at)
				if early && (frames != before || c.np != np) {
					t.Fatalf("Idle before IdleDue (%v, %v) emitted %d frames, pending %d → %d", due, ok, frames-before, np, c.np)
				}
			}
			if int64(frames)*c.FrameTicks+int64(c.fill) != c.Pos() {
				t.Fatalf("%d frames + %d bytes, position %d: not gap-free", frames, c.fill, c.Pos())
			}
		}
		c.Finish()
		if c.fill != 0 || int64(frames)*c.FrameTicks != c.Pos() || c.np != 0 {
			t.Fatalf("after Finish: %d frames, position %d, %d pending", frames, c.Pos(), c.np)
		}
	})
}
