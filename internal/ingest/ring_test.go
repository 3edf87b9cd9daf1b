package ingest

import (
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"

	"github.com/google/go-cmp/cmp"
)

func TestRingKeepsTheNewest(t *testing.T) {
	r := newRing(4, 8)
	for seq := uint32(0); seq < 10; seq++ {
		r.put(seq, append(r.slot(), byte(seq)))
	}
	var got []byte
	r.each(0, 100, func(_ uint32, b []byte) bool { got = append(got, b[0]); return true })
	if d := cmp.Diff([]byte{6, 7, 8, 9}, got); d != "" {
		t.Errorf("ring (-want +got)\n%s", d)
	}
	got = nil
	r.each(7, 9, func(_ uint32, b []byte) bool { got = append(got, b[0]); return true })
	if d := cmp.Diff([]byte{7, 8}, got); d != "" {
		t.Errorf("range [7,9) (-want +got)\n%s", d)
	}
	if n := testing.AllocsPerRun(100, func() { r.put(11, append(r.slot(), 11)) }); n != 0 {
		t.Errorf("put allocates %v once warm", n)
	}
}

// TestRingKeepsFramesLargerThanTheirSlot stores frames that outgrow the slot size between ones
// that fit: each comes back whole, and the ring allocates nothing once every slot has its size.
func TestRingKeepsFramesLargerThanTheirSlot(t *testing.T) {
	r := newRing(3, 4)
	frameOf := func(seq uint32) []byte {
		n := 2 + int(seq%3)*3 // 2, 5, 8 bytes: the slot holds 4
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(seq)
		}
		return b
	}
	for seq := uint32(0); seq < 9; seq++ {
		r.put(seq, append(r.slot(), frameOf(seq)...))
	}
	var got [][]byte
	r.each(0, 100, func(_ uint32, b []byte) bool { got = append(got, append([]byte(nil), b...)); return true })
	want := [][]byte{frameOf(6), frameOf(7), frameOf(8)}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("ring (-want +got)\n%s", d)
	}
	seq := uint32(9)
	payloads := [][]byte{frameOf(9), frameOf(10), frameOf(11)}
	if n := testing.AllocsPerRun(100, func() {
		r.put(seq, append(r.slot(), payloads[seq%3]...))
		seq++
	}); n != 0 {
		t.Errorf("put allocates %v once every slot has its size", n)
	}
}

// TestRingBlockGoesBackWhenTheRingIsGone: a ring's off-heap block returns to its pool once the
// ring is unreachable, cleared, and the next ring of that size reuses it.
func TestRingBlockGoesBackWhenTheRingIsGone(t *testing.T) {
	const frames, stride = 7, 93 // a size no other test uses, so its pool is this test's
	r := newRing(frames, stride)
	r.put(0, append(r.slot(), 0xAA, 0xBB))
	block := &r.buf[0]
	r = nil
	p := poolOf(frames * stride)
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		p.mu.Lock()
		back := slices.ContainsFunc(p.free, func(b []byte) bool { return &b[0] == block })
		p.mu.Unlock()
		if back {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the block of an unreachable ring did not go back to its pool within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var reused *ring
	for i := 0; reused == nil && i < blockRegion/(frames*stride)+1; i++ {
		if r := newRing(frames, stride); &r.buf[0] == block {
			reused = r
		}
	}
	if reused == nil {
		t.Fatal("the returned block was never handed out again")
	}
	if reused.buf[0] != 0 || reused.buf[1] != 0 {
		t.Errorf("a reused block still holds the last call's frame: % x", reused.buf[:2])
	}
}

// BenchmarkCallRingsHeap measures the Go heap a two-leg G.711 call's 5 s replay rings take
// (heap-bytes/call); the rings' own memory (96 KB a call) is off the heap.
func BenchmarkCallRingsHeap(b *testing.B) {
	const calls = 1000
	stride := frame.HeaderLen + 160
	keep := make([]*ring, 0, 2*calls)
	var before, after runtime.MemStats
	for range b.N {
		clear(keep)
		keep = keep[:0]
		runtime.GC()
		runtime.ReadMemStats(&before)
		for range 2 * calls {
			keep = append(keep, newRing(250, stride))
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
	}
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/calls, "heap-bytes/call")
	runtime.KeepAlive(keep)
}

// TestRingReleaseGivesTheBlockBackAtOnce: a released ring (its call ended) is back in its pool
// without waiting for a collection, holds nothing, and releasing it twice changes nothing.
func TestRingReleaseGivesTheBlockBackAtOnce(t *testing.T) {
	const frames, stride = 5, 91 // a size no other test uses
	r := newRing(frames, stride)
	r.put(0, append(r.slot(), 1, 2, 3))
	block := &r.buf[0]
	p := poolOf(frames * stride)
	r.release()
	r.release()
	p.mu.Lock()
	n := 0
	for _, b := range p.free {
		if &b[0] == block {
			n++
		}
	}
	p.mu.Unlock()
	if n != 1 {
		t.Fatalf("the released block is in its pool %d times, want once", n)
	}
	r.each(0, 100, func(uint32, []byte) bool { t.Error("a released ring still yields a frame"); return false })
	runtime.KeepAlive(r)
}
