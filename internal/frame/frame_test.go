package frame

import (
	"bytes"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func sample() Header {
	return Header{Flags: FlagReplayed, Codec: CodecPCMU, Leg: 1, SampleRate: 8000, Epoch: 3,
		Seq: 4242, MediaTS: 4242 * 160, Capture: 1_700_000_000_123_456_789, DurationUS: 20000}
}

func TestRoundTrip(t *testing.T) {
	h := sample()
	payload := bytes.Repeat([]byte{0x7f}, 160)
	buf, err := Append(nil, &h, payload)
	if err != nil {
		t.Fatal(err)
	}
	if len(buf) != HeaderLen+160 || h.MarshalSize() != len(buf) {
		t.Fatalf("len %d, MarshalSize %d", len(buf), h.MarshalSize())
	}
	var got Header
	p, err := got.Unmarshal(buf)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(h, got); d != "" {
		t.Errorf("header (-want +got):\n%s", d)
	}
	if !bytes.Equal(p, payload) {
		t.Error("payload differs")
	}
}

func TestUnmarshalErrors(t *testing.T) {
	h := sample()
	good, _ := Append(nil, &h, make([]byte, 10))
	for _, tc := range []struct {
		name string
		buf  []byte
		want error
	}{
		{"empty", nil, ErrShort},
		{"header only part", good[:HeaderLen-1], ErrShort},
		{"payload cut", good[:len(good)-1], ErrShort},
		{"version", append([]byte{9}, good[1:]...), ErrVersion},
		{"codec", append(append([]byte{}, good[:2]...), append([]byte{99}, good[3:]...)...), ErrCodec},
	} {
		var x Header
		if _, err := x.Unmarshal(tc.buf); !errors.Is(err, tc.want) {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestZeroAllocs(t *testing.T) {
	h := sample()
	payload := make([]byte, 160)
	buf := make([]byte, 0, 512)
	var out Header
	n := testing.AllocsPerRun(1000, func() {
		b, _ := Append(buf[:0], &h, payload)
		if _, err := out.Unmarshal(b); err != nil {
			t.Fatal(err)
		}
	})
	if n != 0 {
		t.Fatalf("marshal+parse allocates %v per frame, want 0", n)
	}
}

func BenchmarkMarshal(b *testing.B) {
	h := sample()
	payload := make([]byte, 160)
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = Append(buf[:0], &h, payload)
	}
}

func BenchmarkUnmarshal(b *testing.B) {
	h := sample()
	buf, _ := Append(nil, &h, make([]byte, 160))
	var out Header
	b.ReportAllocs()
	for b.Loop() {
		if _, err := out.Unmarshal(buf); err != nil {
			b.Fatal(err)
		}
	}
}

func FuzzUnmarshal(f *testing.F) {
	h := sample()
	good, _ := Append(nil, &h, make([]byte, 160))
	f.Add(good)
	f.Add([]byte{1, 0, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		var x Header
		p, err := x.Unmarshal(data)
		if err != nil {
			return
		}
		re, err := Append(nil, &x, p)
		if err != nil {
			t.Fatalf("re-marshal: %v", err)
		}
		if !bytes.Equal(re, data[:len(re)]) {
			t.Fatalf("round trip differs")
		}
	})
}
