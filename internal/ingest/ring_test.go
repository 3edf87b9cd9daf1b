package ingest

import (
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/rs/zerolog"

	"github.com/google/go-cmp/cmp"
)

// newRing returns a ring that owns its block itself.
func newRing(frames, stride int) *ring {
	r := new(ring)
	*r = makeRing(r, frames, stride)
	return r
}

// putFrame stores the frame with sequence seq and payload p in r, as a call does.
func putFrame(t testing.TB, r *ring, seq uint32, p []byte) {
	h := frame.Header{Codec: frame.CodecPCMU, SampleRate: 8000, Seq: seq}
	b, err := frame.Append(r.slot(), &h, p)
	if err != nil {
		t.Fatal(err)
	}
	r.put(b)
}

// ringFrames returns the payloads of the frames in r with from <= seq < to, checking that each
// frame's sequence is the one each reports.
func ringFrames(t *testing.T, r *ring, from, to int64) (seqs []uint32, payloads [][]byte) {
	t.Helper()
	r.each(from, to, func(seq uint32, b []byte) bool {
		var h frame.Header
		p, err := h.Unmarshal(b)
		if err != nil || h.Seq != seq || len(b) != frame.HeaderLen+len(p) {
			t.Fatalf("frame %d: % x (%v)", seq, b, err)
		}
		seqs = append(seqs, seq)
		payloads = append(payloads, append([]byte(nil), p...))
		return true
	})
	return seqs, payloads
}

func TestRingKeepsTheNewest(t *testing.T) {
	r := newRing(4, frame.HeaderLen+1)
	for seq := uint32(0); seq < 10; seq++ {
		putFrame(t, r, seq, []byte{byte(seq)})
	}
	seqs, payloads := ringFrames(t, r, 0, 100)
	if d := cmp.Diff([]uint32{6, 7, 8, 9}, seqs); d != "" {
		t.Errorf("ring (-want +got)\n%s", d)
	}
	if d := cmp.Diff([][]byte{{6}, {7}, {8}, {9}}, payloads); d != "" {
		t.Errorf("ring payloads (-want +got)\n%s", d)
	}
	seqs, _ = ringFrames(t, r, 7, 9)
	if d := cmp.Diff([]uint32{7, 8}, seqs); d != "" {
		t.Errorf("range [7,9) (-want +got)\n%s", d)
	}
	p := []byte{11}
	if n := testing.AllocsPerRun(100, func() { putFrame(t, r, 11, p) }); n != 0 {
		t.Errorf("put allocates %v once warm", n)
	}
}

// TestRingKeepsFramesLargerThanTheirSlot stores frames that outgrow the slot size between ones
// that fit: each comes back whole, and the ring allocates nothing once every slot has its size.
func TestRingKeepsFramesLargerThanTheirSlot(t *testing.T) {
	r := newRing(3, frame.HeaderLen+4)
	payloadOf := func(seq uint32) []byte {
		n := 2 + int(seq%3)*3 // 2, 5, 8 bytes: the slot holds 4
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(seq)
		}
		return b
	}
	for seq := uint32(0); seq < 9; seq++ {
		putFrame(t, r, seq, payloadOf(seq))
	}
	seqs, got := ringFrames(t, r, 0, 100)
	if d := cmp.Diff([]uint32{6, 7, 8}, seqs); d != "" {
		t.Errorf("ring (-want +got)\n%s", d)
	}
	if d := cmp.Diff([][]byte{payloadOf(6), payloadOf(7), payloadOf(8)}, got); d != "" {
		t.Errorf("ring payloads (-want +got)\n%s", d)
	}
	seq := uint32(9)
	payloads := [][]byte{payloadOf(9), payloadOf(10), payloadOf(11)}
	if n := testing.AllocsPerRun(100, func() {
		putFrame(t, r, seq, payloads[seq%3])
		seq++
	}); n != 0 {
		t.Errorf("put allocates %v once every slot has its size", n)
	}
	seqs, got = ringFrames(t, r, 0, 1000)
	if want := []uint32{seq - 3, seq - 2, seq - 1}; !slices.Equal(seqs, want) ||
		!slices.EqualFunc(got, [][]byte{payloads[want[0]%3], payloads[want[1]%3], payloads[want[2]%3]}, slices.Equal) {
		t.Errorf("after the allocation check the ring holds %v %v, want %v", seqs, got, want)
	}
}

// TestRingBlockGoesBackWhenTheRingIsGone: a ring's off-heap block returns to its pool once the
// ring is unreachable, cleared, and the next ring of that size reuses it.
func TestRingBlockGoesBackWhenTheRingIsGone(t *testing.T) {
	const frames, stride = 7, frame.HeaderLen + 61 // a size no other test uses, so its pool is this test's
	busy := newRing(frames, stride)                // keeps the pool from going idle, which would unmap it
	defer busy.release()
	r := newRing(frames, stride)
	putFrame(t, r, 0, []byte{0xAA, 0xBB})
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

// BenchmarkCallHeap measures the Go heap a placed two-leg G.711 call with 5 s replay rings
// takes (heap-bytes/call): the Call, its legs and rings' fields, subjects and logger; the rings'
// own memory (96 KB a call) is off the heap.
func BenchmarkCallHeap(b *testing.B) {
	const calls = 1000
	cfg := DefaultConfig()
	cfg.ID = "bench"
	n, err := New(cfg, Deps{Log: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	keep := make([]*Call, 0, calls)
	var before, after runtime.MemStats
	for range b.N {
		for _, c := range keep {
			c.releaseRings()
		}
		clear(keep)
		keep = keep[:0]
		runtime.GC()
		runtime.ReadMemStats(&before)
		for i := range calls {
			keep = append(keep, n.newCall(session.Spec{ID: session.ID{Tenant: "acme", Call: fmt.Sprintf("call-%05d", i)}, Legs: []session.Leg{
				{Index: 0, Name: "caller", Codec: frame.CodecPCMU, Rate: 8000}, {Index: 1, Name: "agent", Codec: frame.CodecPCMU, Rate: 8000}}}))
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
	const frames, stride = 5, frame.HeaderLen + 59 // a size no other test uses
	busy := newRing(frames, stride)                // keeps the pool from going idle, which would unmap it
	defer busy.release()
	r := newRing(frames, stride)
	putFrame(t, r, 0, []byte{1, 2, 3})
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

// TestIdleBlockPoolIsUnmapped: the pool of a block size keeps its regions while any block is out
// and gives them back to the system when the last one comes back; the next ring maps afresh.
func TestIdleBlockPoolIsUnmapped(t *testing.T) {
	const frames, stride = 6, frame.HeaderLen + 57 // a size no other test uses
	p := poolOf(frames * stride)
	state := func() (regions, free, out int) {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.regions), len(p.free), p.out
	}
	a, b := newRing(frames, stride), newRing(frames, stride)
	putFrame(t, a, 0, []byte{1})
	a.release()
	if regions, free, out := state(); regions != 1 || free == 0 || out != 1 {
		t.Fatalf("one ring of two released: %d regions, %d free blocks, %d out; want 1 region kept, 1 out", regions, free, out)
	}
	b.release()
	if regions, free, out := state(); regions != 0 || free != 0 || out != 0 {
		t.Fatalf("every ring released: %d regions, %d free blocks, %d out; want all unmapped", regions, free, out)
	}
	c := newRing(frames, stride)
	putFrame(t, c, 7, []byte{9})
	if seqs, payloads := ringFrames(t, c, 0, 100); !slices.Equal(seqs, []uint32{7}) || !slices.Equal(payloads[0], []byte{9}) {
		t.Errorf("a ring from a remapped pool holds %v %v", seqs, payloads)
	}
	c.release()
}

// TestNodeCloseUnmapsTheRings: once a node has closed (its calls ended), the ring memory its
// calls used is unmapped, so a later node in the same process does not inherit it.
func TestNodeCloseUnmapsTheRings(t *testing.T) {
	const frames = 67 // a ring length, and so a block size, no other test uses
	n, _, _ := stNode(t, func(c *Config) { c.Ring = frames * frame.Duration })
	stCall(t, n, "a", 3)
	stCall(t, n, "b", 300)
	p := poolOf(frames * (frame.HeaderLen + 160))
	p.mu.Lock()
	regions, out := len(p.regions), p.out
	p.mu.Unlock()
	if regions != 1 || out != 4 {
		t.Fatalf("two calls up: %d regions, %d blocks out; want 1 and 4", regions, out)
	}
	n.Close()
	p.mu.Lock()
	regions, out = len(p.regions), p.out
	p.mu.Unlock()
	if regions != 0 || out != 0 {
		t.Errorf("node closed: %d regions mapped, %d blocks out; want none", regions, out)
	}
}
