package ingest

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestRingKeepsTheNewest(t *testing.T) {
	r := newRing(4)
	for seq := uint32(0); seq < 10; seq++ {
		r.put(seq, append(r.slot(), byte(seq)))
	}
	var got []byte
	r.each(0, 100, func(b []byte) { got = append(got, b[0]) })
	if d := cmp.Diff([]byte{6, 7, 8, 9}, got); d != "" {
		t.Errorf("ring (-want +got)\n%s", d)
	}
	got = nil
	r.each(7, 9, func(b []byte) { got = append(got, b[0]) })
	if d := cmp.Diff([]byte{7, 8}, got); d != "" {
		t.Errorf("range [7,9) (-want +got)\n%s", d)
	}
	if n := testing.AllocsPerRun(100, func() { r.put(11, append(r.slot(), 11)) }); n != 0 {
		t.Errorf("put allocates %v once warm", n)
	}
}
