package ingest

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/google/go-cmp/cmp"
)

// newRing returns a ring of frames frames of up to payload bytes that owns its block itself.
func newRing(frames, payload int) *ring {
	r := new(ring)
	*r = makeRing(r, frames, payload)
	return r
}

// testLeg is the leg of the frames putFrame stores.
var testLeg = legFrame{codec: frame.CodecPCMU, index: 1, rate: 8000, samples: 160}

// testFrame is the frame with sequence seq and payload p that putFrame stores.
func testFrame(t testing.TB, dst []byte, seq uint32, p []byte) []byte {
	h := frame.Header{Flags: frame.Flags(seq % 32), Codec: testLeg.codec, Leg: testLeg.index, SampleRate: testLeg.rate,
		Epoch: 1 + seq/3, Seq: seq, MediaTS: seq * testLeg.samples, Capture: 1_700_000_000_000_000_000 + int64(seq)*int64(frame.Duration),
		DurationUS: uint16(frame.Duration / time.Microsecond)}
	b, err := frame.Append(dst, &h, p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// putFrame stores the frame with sequence seq and payload p in r as a call does: marshalled into
// the slot, then put.
func putFrame(t testing.TB, r *ring, seq uint32, p []byte) {
	r.put(testFrame(t, r.slot(), seq, p))
}

// ringFrames returns the payloads of the frames in r with from <= seq < to (next: the sequence
// after the newest), checking that each frame is rebuilt as putFrame marshalled it.
func ringFrames(t *testing.T, r *ring, next uint32, from, to int64) (seqs []uint32, payloads [][]byte) {
	t.Helper()
	r.each(next, from, to, func(seq uint32, k int) bool {
		b := r.frame(nil, k, seq, testLeg, 0)
		var h frame.Header
		p, err := h.Unmarshal(b)
		if err != nil || r.size(k) != len(b) || !bytes.Equal(b, testFrame(t, nil, seq, p)) {
			t.Fatalf("frame %d: % x (%v)", seq, b, err)
		}
		seqs = append(seqs, seq)
		payloads = append(payloads, append([]byte(nil), p...))
		return true
	})
	return seqs, payloads
}

func TestRingKeepsTheNewest(t *testing.T) {
	r := newRing(4, 1)
	for seq := uint32(0); seq < 10; seq++ {
		putFrame(t, r, seq, []byte{byte(seq)})
	}
	seqs, payloads := ringFrames(t, r, 10, 0, 100)
	if d := cmp.Diff([]uint32{6, 7, 8, 9}, seqs); d != "" {
		t.Errorf("ring (-want +got)\n%s", d)
	}
	if d := cmp.Diff([][]byte{{6}, {7}, {8}, {9}}, payloads); d != "" {
		t.Errorf("ring payloads (-want +got)\n%s", d)
	}
	seqs, _ = ringFrames(t, r, 10, 7, 9)
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
	r := newRing(3, 4)
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
	seqs, got := ringFrames(t, r, 9, 0, 100)
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
	seqs, got = ringFrames(t, r, seq, 0, 1000)
	if want := []uint32{seq - 3, seq - 2, seq - 1}; !slices.Equal(seqs, want) ||
		!slices.EqualFunc(got, [][]byte{payloads[want[0]%3], payloads[want[1]%3], payloads[want[2]%3]}, slices.Equal) {
		t.Errorf("after the allocation check the ring holds %v %v, want %v", seqs, got, want)
	}
}

// TestRingBlockGoesBackWhenTheRingIsGone: a ring's off-heap block returns to its pool once the
// ring is unreachable, cleared, and the next ring of that size reuses it.
func TestRingBlockGoesBackWhenTheRingIsGone(t *testing.T) {
	const frames, payload = 7, 61    // a size no other test uses, so its pool is this test's
	busy := newRing(frames, payload) // keeps the pool from going idle, which would unmap it
	defer busy.release()
	r := newRing(frames, payload)
	putFrame(t, r, 0, []byte{0xAA, 0xBB})
	block := &r.buf[0]
	r = nil
	p := poolOf(ringBlock(frames, payload))
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
	for i := 0; reused == nil && i < blockRegion/ringBlock(frames, payload)+1; i++ {
		if r := newRing(frames, payload); &r.buf[0] == block {
			reused = r
		}
	}
	if reused == nil {
		t.Fatal("the returned block was never handed out again")
	}
	if !slices.Equal(reused.buf, make([]byte, len(reused.buf))) {
		t.Errorf("a reused block still holds the last call's frame")
	}
}

// BenchmarkCallHeap measures the Go heap a placed two-leg G.711 call with 5 s replay rings
// takes (heap-bytes/call): the Call, its legs and rings' fields, subjects and logger; the rings'
// own memory (88 KB a call) is off the heap.
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
	const frames, payload = 5, 59    // a size no other test uses
	busy := newRing(frames, payload) // keeps the pool from going idle, which would unmap it
	defer busy.release()
	r := newRing(frames, payload)
	putFrame(t, r, 0, []byte{1, 2, 3})
	block := &r.buf[0]
	p := poolOf(ringBlock(frames, payload))
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
	r.each(1, 0, 100, func(uint32, int) bool { t.Error("a released ring still yields a frame"); return false })
	runtime.KeepAlive(r)
}

// TestIdleBlockPoolIsUnmapped: the pool of a block size keeps its regions while any block is out
// and gives them back to the system when the last one comes back; the next ring maps afresh.
func TestIdleBlockPoolIsUnmapped(t *testing.T) {
	const frames, payload = 6, 57 // a size no other test uses
	p := poolOf(ringBlock(frames, payload))
	state := func() (regions, free, out int) {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.regions), len(p.free), p.out
	}
	a, b := newRing(frames, payload), newRing(frames, payload)
	putFrame(t, a, 0, []byte{1})
	a.release()
	if regions, free, out := state(); regions != 1 || free == 0 || out != 1 {
		t.Fatalf("one ring of two released: %d regions, %d free blocks, %d out; want 1 region kept, 1 out", regions, free, out)
	}
	b.release()
	if regions, free, out := state(); regions != 0 || free != 0 || out != 0 {
		t.Fatalf("every ring released: %d regions, %d free blocks, %d out; want all unmapped", regions, free, out)
	}
	c := newRing(frames, payload)
	putFrame(t, c, 7, []byte{9})
	if seqs, payloads := ringFrames(t, c, 8, 0, 100); !slices.Equal(seqs, []uint32{7}) || !slices.Equal(payloads[0], []byte{9}) {
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
	p := poolOf(ringBlock(frames, 160))
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

// TestReplayIsWhatWasPublished: a replayed frame is the frame as it was published, byte for
// byte, but for the replayed flag, whatever it carried: the epoch-start flag, a paused frame's
// empty payload, a payload larger than its slot, a smaller one, an epoch change between frames,
// the last frame; after every frame, across the ring's wrap. A slot keeps half of its frame's
// header and a frame is marshalled over the slot below, so this is what makes it a replay ring.
func TestReplayIsWhatWasPublished(t *testing.T) {
	const frames = 5
	n, _, client := stNode(t, func(c *Config) { c.Ring = frames * frame.Duration })
	spec := session.Spec{ID: session.ID{Tenant: "acme", Call: "exact"}, Legs: []session.Leg{
		{Index: 0, Name: "caller", Codec: frame.CodecPCMU, Rate: 8000}, {Index: 1, Name: "agent", Codec: frame.CodecPCMU, Rate: 8000}}}
	published := make(chan []byte, 64)
	sub, err := client.Subscribe(subjects.Audio("acme", "exact", "agent"), func(m *nats.Msg) { published <- m.Data })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := client.Flush(); err != nil {
		t.Fatal(err)
	}
	c, err := n.StartCall(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Unix(1_700_000_000, 123)
	var want [][]byte // published, newest last
	send := func(i, size int, flags frame.Flags) {
		t.Helper()
		p := make([]byte, size)
		for j := range p {
			p[j] = byte(i*7 + j) // no two frames, and no two places in one, alike
		}
		if err := c.SendAt(1, p, flags, at.Add(time.Duration(i)*frame.Duration)); err != nil {
			t.Fatal(err)
		}
		select {
		case b := <-published:
			want = append(want, b)
		case <-time.After(10 * time.Second):
			t.Fatalf("frame %d was not published", i)
		}
		buf, next, more := c.replay(nil, wire.LegRange{Leg: 1, From: session.FromRingStart}, 1<<20)
		if more {
			t.Fatalf("after frame %d: replay cut short at %d", i, next)
		}
		for k, w := range want[max(0, len(want)-frames):] {
			var h frame.Header
			p, err := h.Unmarshal(buf)
			if err != nil {
				t.Fatalf("after frame %d: replayed frame %d: %v", i, k, err)
			}
			got := buf[:frame.HeaderLen+len(p)]
			buf = buf[len(got):]
			exp := append([]byte(nil), w...)
			exp[1] |= byte(frame.FlagReplayed)
			if !bytes.Equal(got, exp) {
				t.Errorf("after frame %d: replayed as\n% x\nwas published as (replayed flag added)\n% x", i, got, exp)
			}
		}
		if len(buf) != 0 {
			t.Errorf("after frame %d: %d bytes replayed beyond the ring's frames", i, len(buf))
		}
	}
	i := 0
	for ; i < 2*frames; i++ {
		send(i, 160, 0) // the epoch's first frame, then the ring wraps
	}
	send(i, 160, frame.FlagGapFilled)
	send(i+1, 400, 0) // larger than its slot
	send(i+2, 7, 0)   // smaller
	send(i+3, 0, 0)   // empty
	c.mu.Lock()
	c.pause.on = true // a secure pause: published without audio
	c.mu.Unlock()
	send(i+4, 160, 0)
	c.mu.Lock()
	c.pause.on = false
	c.epoch++ // frames after an epoch change carry the new epoch
	c.mu.Unlock()
	for i += 5; i < 4*frames; i++ {
		send(i, 160, 0) // over the larger frame's slot and around again
	}
	send(i, 160, frame.FlagLast)
}
