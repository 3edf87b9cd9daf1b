package wav

import (
	"bytes"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestWriteParseRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		format, rate, bits int
	}{{FormatPCM, 8000, 16}, {FormatPCM, 48000, 16}, {FormatMuLaw, 8000, 8}, {FormatALaw, 8000, 8}} {
		chans := [][]byte{make([]byte, 320), make([]byte, 320)}
		for i := range chans[0] {
			chans[0][i], chans[1][i] = byte(i), byte(255-i)
		}
		var b bytes.Buffer
		if err := Write(&b, tc.format, tc.rate, tc.bits, chans); err != nil {
			t.Fatal(err)
		}
		a, err := Parse(b.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		want := &Audio{Format: tc.format, Rate: tc.rate, BitsPerSample: tc.bits, Channels: chans}
		if d := cmp.Diff(want, a); d != "" {
			t.Errorf("format %d: (-want +got)\n%s", tc.format, d)
		}
	}
}

func TestParseRejects(t *testing.T) {
	var b bytes.Buffer
	_ = Write(&b, FormatPCM, 8000, 16, [][]byte{make([]byte, 4)})
	good := b.Bytes()
	float := append([]byte{}, good...)
	float[20] = 3 // IEEE float
	for name, in := range map[string][]byte{"empty": nil, "not riff": []byte("RIFX0000WAVE"), "float": float, "no data": good[:36]} {
		if _, err := Parse(in); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: err %v, want ErrFormat", name, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	var b bytes.Buffer
	_ = Write(&b, FormatMuLaw, 8000, 8, [][]byte{make([]byte, 16), make([]byte, 16)})
	f.Add(b.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := Parse(data)
		if err != nil {
			return
		}
		if len(a.Channels) == 0 || a.Rate <= 0 {
			t.Fatalf("accepted audio without channels or rate: %+v", a)
		}
	})
}
