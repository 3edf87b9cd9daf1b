package sip

import (
	"bytes"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/timeline"
)

// cutRig feeds a cutter and records what it emits.
type cutRig struct {
	c      *cutter
	frames [][]byte
	filled []bool
	now    time.Time
}

func newRig() *cutRig {
	r := &cutRig{now: time.Unix(1000, 0)}
	r.c = newCutter(8000, 60*time.Millisecond, 400*time.Millisecond, 0xD5, func(p []byte, gap bool) {
		r.frames = append(r.frames, append([]byte(nil), p...))
		r.filled = append(r.filled, gap)
	})
	return r
}

// pkt sends a packet whose bytes all equal the low byte of its index, ptime ms long.
func (r *cutRig) pkt(seq uint16, ts uint32, ptime int, marker bool, b byte) {
	r.c.push(r.now, seq, ts, 0x1234, marker, bytes.Repeat([]byte{b}, ptime*8))
}

func (r *cutRig) advance(d time.Duration) {
	for end := r.now.Add(d); r.now.Before(end); {
		r.now = r.now.Add(20 * time.Millisecond)
		r.c.idle(r.now)
	}
}

func TestCutterRecutsThirtyMs(t *testing.T) {
	r := newRig()
	for i := 0; i < 10; i++ { // 300 ms in 30 ms packets
		r.pkt(uint16(i), uint32(240*i), 30, false, byte(i))
		r.now = r.now.Add(30 * time.Millisecond)
	}
	if len(r.frames) != 15 {
		t.Fatalf("%d frames, want 15", len(r.frames))
	}
	var all []byte
	for i, f := range r.frames {
		if r.filled[i] {
			t.Errorf("frame %d gap-filled", i)
		}
		all = append(all, f...)
	}
	for i := 0; i < 10; i++ {
		if !bytes.Equal(all[240*i:240*(i+1)], bytes.Repeat([]byte{byte(i)}, 240)) {
			t.Fatalf("packet %d not in place", i)
		}
	}
}

func TestCutterReordersWithinWindow(t *testing.T) {
	r := newRig()
	order := []int{0, 2, 1, 3, 5, 4, 6}
	for _, i := range order {
		r.pkt(uint16(i), uint32(160*i), 20, false, byte(i))
		r.now = r.now.Add(20 * time.Millisecond)
	}
	if len(r.frames) != 7 {
		t.Fatalf("%d frames, want 7", len(r.frames))
	}
	for i, f := range r.frames {
		if f[0] != byte(i) || r.filled[i] {
			t.Errorf("frame %d holds packet %d (filled %v)", i, f[0], r.filled[i])
		}
	}
	if r.c.stats().Reordered != 2 {
		t.Errorf("reordered %d, want 2", r.c.stats().Reordered)
	}
}

func TestCutterFillsLossAfterWindowAndDropsLate(t *testing.T) {
	r := newRig()
	for i := 0; i < 8; i++ {
		if i == 3 {
			continue // lost
		}
		r.pkt(uint16(i), uint32(160*i), 20, false, byte(i+1))
		r.now = r.now.Add(20 * time.Millisecond)
	}
	r.advance(100 * time.Millisecond)
	if len(r.frames) != 8 {
		t.Fatalf("%d frames, want 8", len(r.frames))
	}
	for i := range r.frames {
		if r.filled[i] != (i == 3) {
			t.Errorf("frame %d filled %v", i, r.filled[i])
		}
	}
	if r.frames[3][0] != 0xD5 {
		t.Errorf("lost frame filled with %#x, want A-law silence", r.frames[3][0])
	}
	r.pkt(3, 480, 20, false, 9) // arrives too late
	if len(r.frames) != 8 || r.c.stats().Late != 1 || r.c.stats().Lost != 1 {
		t.Errorf("late packet: %d frames, late %d, lost %d", len(r.frames), r.c.stats().Late, r.c.stats().Lost)
	}
	r.pkt(7, 160*7, 20, false, 9) // duplicate
	if len(r.frames) != 8 {
		t.Errorf("duplicate produced a frame")
	}
}

func TestCutterSilenceSuppressionAndRealTimeFill(t *testing.T) {
	r := newRig()
	for i := 0; i < 5; i++ {
		r.pkt(uint16(i), uint32(160*i), 20, false, 1)
		r.now = r.now.Add(20 * time.Millisecond)
	}
	// The sender goes silent for 2 s (DTX), then resumes with the marker bit and a timestamp
	// that accounts for the silence.
	r.advance(2 * time.Second)
	during := len(r.frames)
	if during < 5+70 {
		t.Errorf("only %d frames during 2 s of silence; want real-time fill", during)
	}
	r.pkt(5, uint32(160*5+16000), 20, true, 2)
	if n := len(r.frames); n != 5+100+1 {
		t.Errorf("%d frames after the talk spurt, want %d (every 20 ms of the 2 s accounted for once)", n, 5+100+1)
	}
	if last := r.frames[len(r.frames)-1]; last[0] != 2 || r.filled[len(r.frames)-1] {
		t.Errorf("talk spurt frame wrong")
	}
}

func TestCutterResumesWithoutTimestampJump(t *testing.T) {
	r := newRig()
	for i := 0; i < 5; i++ {
		r.pkt(uint16(i), uint32(160*i), 20, false, 1)
		r.now = r.now.Add(20 * time.Millisecond)
	}
	r.advance(time.Second) // sender pauses (hold) and resumes where its clock stopped
	before := len(r.frames)
	r.pkt(5, 160*5, 20, false, 3)
	if len(r.frames) != before+1 || r.frames[before][0] != 3 {
		t.Errorf("resumed audio not delivered (frames %d → %d)", before, len(r.frames))
	}
}

func TestCutterSSRCChangeAndJump(t *testing.T) {
	r := newRig()
	r.pkt(0, 1000, 20, false, 1)
	r.now = r.now.Add(20 * time.Millisecond)
	r.c.push(r.now, 500, 999999, 0x9999, false, bytes.Repeat([]byte{2}, 160)) // new SSRC
	r.now = r.now.Add(20 * time.Millisecond)
	r.c.push(r.now, 501, 999999+160+8000*3600, 0x9999, false, bytes.Repeat([]byte{3}, 160)) // 1 h jump
	if len(r.frames) != 3 {
		t.Fatalf("%d frames, want 3", len(r.frames))
	}
	for i, f := range r.frames {
		if f[0] != byte(i+1) || r.filled[i] {
			t.Errorf("frame %d: %d filled %v", i, f[0], r.filled[i])
		}
	}
	if r.c.stats().Jumps != 1 || r.c.stats().SSRCChanges != 1 {
		t.Errorf("jumps %d ssrc changes %d", r.c.stats().Jumps, r.c.stats().SSRCChanges)
	}
}

// TestCutterHeldBackPacketThenJump: one packet held back so the next waits in the reorder
// buffer, then a packet 2^30 ticks ahead. The jump check used to run only with an empty buffer:
// that packet made 6.7 million frames. Now it re-anchors and the stream flows on.
func TestCutterHeldBackPacketThenJump(t *testing.T) {
	r := newRig()
	for i := 0; i < 5; i++ {
		r.pkt(uint16(i), uint32(160*i), 20, false, 1)
		r.now = r.now.Add(20 * time.Millisecond)
	}
	r.pkt(6, 160*6, 20, false, 2) // 5 is held back
	r.now = r.now.Add(20 * time.Millisecond)
	r.pkt(7, 160*7+1<<30, 20, false, 3)
	if len(r.frames) > 5+timeline.MaxFramesPerPacket {
		t.Fatalf("%d frames after the jump", len(r.frames))
	}
	for i := 8; i < 18; i++ {
		r.now = r.now.Add(20 * time.Millisecond)
		r.pkt(uint16(i), uint32(160*i)+1<<30, 20, false, 4)
	}
	if len(r.frames) != 18 || r.frames[17][0] != 4 || r.c.stats().Jumps != 1 {
		t.Errorf("%d frames, want 18 (the held back one filled), jumps %d", len(r.frames), r.c.stats().Jumps)
	}
}

func TestCutterFinishPadsPartialFrame(t *testing.T) {
	r := newRig()
	r.pkt(0, 0, 30, false, 1)
	r.c.finish()
	if len(r.frames) != 2 || !r.filled[1] || r.frames[1][79] != 1 || r.frames[1][80] != 0xD5 {
		t.Errorf("partial frame not padded: %d frames", len(r.frames))
	}
}

func TestCutterZeroAllocs(t *testing.T) {
	c := newCutter(8000, 60*time.Millisecond, 400*time.Millisecond, 0xD5, func([]byte, bool) {})
	p := make([]byte, 240)
	now := time.Unix(0, 0)
	var seq uint16
	var ts uint32
	allocs := testing.AllocsPerRun(1000, func() {
		c.push(now, seq, ts, 1, false, p)
		seq++
		ts += 240
		now = now.Add(30 * time.Millisecond)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per packet, want 0", allocs)
	}
}

func BenchmarkCutter30ms(b *testing.B) {
	c := newCutter(8000, 60*time.Millisecond, 400*time.Millisecond, 0xD5, func([]byte, bool) {})
	p := make([]byte, 240)
	now := time.Unix(0, 0)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		c.push(now, uint16(i), uint32(240*i), 1, false, p)
		now = now.Add(30 * time.Millisecond)
	}
}

func TestDTMFDetector(t *testing.T) {
	var got []dtmfEvent
	d := dtmfDetector{report: func(e dtmfEvent) { got = append(got, e) }}
	ev := func(code byte, end bool, dur uint16) []byte {
		e := byte(10)
		if end {
			e |= 0x80
		}
		return []byte{code, e, byte(dur >> 8), byte(dur)}
	}
	for i := 0; i < 5; i++ {
		d.push(1000, 1, ev(5, false, uint16(160*i)))
	}
	for i := 0; i < 3; i++ { // the end packet, sent three times
		d.push(1000, 1, ev(5, true, 960))
	}
	d.push(3000, 1, ev(11, false, 0)) // '#' whose end packets are all lost
	d.push(5000, 1, ev(10, false, 0)) // '*' starts: '#' is reported
	d.flush()
	if len(got) != 3 || got[0].Digit() != "5" || got[0].Duration != 960 || !got[0].Ended ||
		got[1].Digit() != "#" || got[1].Ended || got[2].Digit() != "*" {
		t.Errorf("events %+v", got)
	}
	if d.push(1, 1, []byte{1, 2}) || d.push(1, 1, []byte{200, 0, 0, 0}) {
		t.Error("malformed telephone-event accepted")
	}
}
