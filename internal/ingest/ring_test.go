package ingest

import (
	"testing"

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
