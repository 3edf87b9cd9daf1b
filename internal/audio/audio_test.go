package audio

import (
	"encoding/binary"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/peertest"
	"github.com/callrouter/callrouter/internal/wav"
)

func TestMuLawKnownValues(t *testing.T) {
	for _, c := range []struct {
		code byte
		want int16
	}{{0x00, -32124}, {0x80, 32124}, {0xFF, 0}, {0x7F, 0}, {0x7E, -8}, {0xFE, 8}, {0x0F, -16764}} {
		if got := MuLaw(c.code); got != c.want {
			t.Errorf("MuLaw(%#x) = %d, want %d", c.code, got, c.want)
		}
	}
	for _, c := range []struct {
		code byte
		want int16
	}{{0xD5, 8}, {0x55, -8}, {0xAA, 32256}, {0x2A, -32256}} {
		if got := ALaw(c.code); got != c.want {
			t.Errorf("ALaw(%#x) = %d, want %d", c.code, got, c.want)
		}
	}
}

func TestG711RoundTrip(t *testing.T) {
	for i := range 256 {
		b := byte(i)
		if b == 0x7F { // μ-law negative zero encodes back as positive zero
			continue
		}
		if got := EncodeMuLaw(MuLaw(b)); got != b {
			t.Errorf("μ-law %#x → %d → %#x", b, MuLaw(b), got)
		}
		if got := EncodeALaw(ALaw(b)); got != b {
			t.Errorf("A-law %#x → %d → %#x", b, ALaw(b), got)
		}
	}
	// Encoding is monotonic in the linear value: quantizing twice is idempotent.
	for s := -32768; s <= 32767; s += 7 {
		v := int16(s)
		if q := MuLaw(EncodeMuLaw(v)); MuLaw(EncodeMuLaw(q)) != q {
			t.Fatalf("μ-law not idempotent at %d", s)
		}
		if q := ALaw(EncodeALaw(v)); ALaw(EncodeALaw(q)) != q {
			t.Fatalf("A-law not idempotent at %d", s)
		}
	}
}

// TestG711MatchesSox decodes sox's own μ-law and A-law encodings of a tone and compares them with
// sox's decoding of the same bytes, sample for sample.
func TestG711MatchesSox(t *testing.T) {
	if _, err := exec.LookPath("sox"); err != nil {
		peertest.Missing(t, "sox not installed")
	}
	dir := t.TempDir()
	for _, enc := range []struct {
		name  string
		codec frame.Codec
		flag  string
	}{{"mulaw", frame.CodecPCMU, "u-law"}, {"alaw", frame.CodecPCMA, "a-law"}} {
		g := filepath.Join(dir, enc.name+".wav")
		lin := filepath.Join(dir, enc.name+"-lin.wav")
		run(t, "sox", "-n", "-r", "8000", "-e", enc.flag, "-b", "8", "-c", "1", g, "synth", "0.2", "sine", "300-3000", "vol", "0.9")
		run(t, "sox", g, "-e", "signed-integer", "-b", "16", lin)
		ga, err := wav.ReadFile(g)
		if err != nil {
			t.Fatal(err)
		}
		la, err := wav.ReadFile(lin)
		if err != nil {
			t.Fatal(err)
		}
		d, err := NewDecoder(enc.codec, 8000)
		if err != nil {
			t.Fatal(err)
		}
		got, err := d.Decode(ga.Channels[0], nil)
		if err != nil {
			t.Fatal(err)
		}
		want := pcm(la.Channels[0])
		if len(got) != len(want) {
			t.Fatalf("%s: %d samples, sox %d", enc.name, len(got), len(want))
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("%s: sample %d = %d, sox %d", enc.name, i, got[i], want[i])
			}
		}
	}
}

func TestL16(t *testing.T) {
	in := []int16{0, 1, -1, 32767, -32768, 1234}
	d, err := NewDecoder(frame.CodecL16, 16000)
	if err != nil {
		t.Fatal(err)
	}
	got, err := d.Decode(AppendL16(nil, in), []int16{7})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 7 || got[0] != 7 {
		t.Fatalf("Decode did not append: %v", got)
	}
	for i, v := range in {
		if got[i+1] != v {
			t.Fatalf("sample %d = %d, want %d", i, got[i+1], v)
		}
	}
	if _, err := d.Decode([]byte{1, 2, 3}, nil); !errors.Is(err, ErrPayload) {
		t.Fatalf("odd payload: %v", err)
	}
	if d.Rate() != 16000 {
		t.Fatalf("rate %d", d.Rate())
	}
}

func TestNewDecoderRejects(t *testing.T) {
	for _, c := range []struct {
		codec frame.Codec
		rate  int
		err   error
	}{{frame.CodecPCMU, 16000, ErrRate}, {frame.CodecL16, 11025, ErrRate}, {frame.CodecOpus, 44100, ErrRate},
		{frame.CodecG722, 48000, ErrRate}, {frame.CodecNone, 8000, ErrCodec}} {
		if _, err := NewDecoder(c.codec, c.rate); !errors.Is(err, c.err) {
			t.Errorf("NewDecoder(%s, %d) = %v, want %v", c.codec, c.rate, err, c.err)
		}
	}
}

// readPackets reads a fixture of Opus packets, each prefixed by its length (uint16 LE).
func readPackets(t testing.TB, name string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for len(b) >= 2 {
		n := int(binary.LittleEndian.Uint16(b))
		out = append(out, b[2:2+n])
		b = b[2+n:]
	}
	return out
}

func pcm(b []byte) []int16 {
	out := make([]int16, len(b)/2)
	for i := range out {
		out[i] = int16(binary.LittleEndian.Uint16(b[2*i:]))
	}
	return out
}

func snr(ref, got []int16) float64 {
	var num, den float64
	for i := range ref {
		x, y := float64(ref[i]), float64(got[i])
		num += x * x
		den += (x - y) * (x - y)
	}
	if den == 0 {
		return math.Inf(1)
	}
	return 10 * math.Log10(num/den)
}

// TestOpusMatchesLibopus decodes packets that libopus 1.3.1 encoded (a SILK and a hybrid stream,
// 20 ms each, from espeak-ng speech) and compares with libopus's own decoding of them: pion/opus
// within 40 dB, the libopus build (-tags libopus) sample for sample.
func TestOpusMatchesLibopus(t *testing.T) {
	want := 40.0
	if OpusImpl == "libopus" {
		want = math.Inf(1)
	}
	for _, name := range []string{"silk12k", "hybrid32k"} {
		pk := readPackets(t, "opus-"+name+".pkts")
		ref, err := os.ReadFile(filepath.Join("testdata", "opus-"+name+".ref48k.s16"))
		if err != nil {
			t.Fatal(err)
		}
		d, err := NewDecoder(frame.CodecOpus, 48000)
		if err != nil {
			t.Fatal(err)
		}
		var got []int16
		for _, p := range pk {
			n := len(got)
			if got, err = d.Decode(p, got); err != nil {
				t.Fatal(err)
			}
			if len(got)-n != 960 {
				t.Fatalf("%s: a 20 ms packet gave %d samples", name, len(got)-n)
			}
		}
		if s := snr(pcm(ref), got); s < want {
			t.Errorf("%s: %s: %.1f dB SNR against libopus, want ≥ %.0f", OpusImpl, name, s, want)
		} else {
			t.Logf("%s: %s: %.1f dB SNR against libopus", OpusImpl, name, s)
		}
	}
	if _, err := mustDecoder(t, frame.CodecOpus, 48000).Decode([]byte{0xFF}, nil); err == nil {
		t.Error("a truncated code-3 packet decoded")
	}
}

// TestG722MatchesFFmpeg decodes G.722 that ffmpeg encoded from espeak-ng speech and compares
// with ffmpeg's own decoding of it: bit-exact. When ffmpeg is installed, it does the same with
// a fresh sox-made sweep.
func TestG722MatchesFFmpeg(t *testing.T) {
	g, err := os.ReadFile("testdata/g722-speech.g722")
	if err != nil {
		t.Fatal(err)
	}
	ref, err := os.ReadFile("testdata/g722-speech.ffmpeg.s16")
	if err != nil {
		t.Fatal(err)
	}
	checkG722(t, g, pcm(ref))
	if _, err := exec.LookPath("ffmpeg"); err != nil {
		t.Log("ffmpeg not installed: committed fixture only")
		return
	}
	dir := t.TempDir()
	src, enc, dec := filepath.Join(dir, "sweep.wav"), filepath.Join(dir, "sweep.g722"), filepath.Join(dir, "sweep.s16")
	run(t, "sox", "-n", "-r", "16000", "-b", "16", "-c", "1", src, "synth", "1", "sine", "100-7900", "vol", "0.7")
	run(t, "ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", src, "-acodec", "g722", "-f", "g722", enc)
	run(t, "ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "g722", "-i", enc, "-f", "s16le", "-acodec", "pcm_s16le", dec)
	g, _ = os.ReadFile(enc)
	ref, _ = os.ReadFile(dec)
	checkG722(t, g, pcm(ref))
}

func checkG722(t *testing.T, g []byte, ref []int16) {
	t.Helper()
	d := mustDecoder(t, frame.CodecG722, 8000)
	if d.Rate() != 16000 {
		t.Fatalf("G.722 rate %d", d.Rate())
	}
	var got []int16
	for off := 0; off < len(g); off += 160 { // 20 ms frames
		var err error
		if got, err = d.Decode(g[off:min(off+160, len(g))], got); err != nil {
			t.Fatal(err)
		}
	}
	if len(got) != len(ref) {
		t.Fatalf("%d samples, ffmpeg %d", len(got), len(ref))
	}
	for i := range ref {
		if got[i] != ref[i] {
			t.Fatalf("sample %d = %d, ffmpeg %d", i, got[i], ref[i])
		}
	}
}

func mustDecoder(t testing.TB, c frame.Codec, rate int) Decoder {
	t.Helper()
	d, err := NewDecoder(c, rate)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

func TestDecodeAllocs(t *testing.T) {
	for _, c := range []struct {
		codec frame.Codec
		rate  int
		p     []byte
	}{{frame.CodecPCMU, 8000, make([]byte, 160)}, {frame.CodecPCMA, 8000, make([]byte, 160)},
		{frame.CodecL16, 16000, make([]byte, 640)}, {frame.CodecG722, 8000, make([]byte, 160)},
		{frame.CodecOpus, 48000, readPackets(t, "opus-hybrid32k.pkts")[5]}} {
		d := mustDecoder(t, c.codec, c.rate)
		dst := make([]int16, 0, 6000)
		if a := testing.AllocsPerRun(100, func() { dst, _ = d.Decode(c.p, dst[:0]) }); a != 0 {
			t.Errorf("%s: %.1f allocs per Decode", c.codec, a)
		}
	}
}

func FuzzDecode(f *testing.F) {
	for _, p := range readPackets(f, "opus-silk12k.pkts")[:3] {
		f.Add(uint8(frame.CodecOpus), p)
	}
	f.Add(uint8(frame.CodecL16), []byte{1, 2, 3, 4})
	f.Add(uint8(frame.CodecPCMU), []byte{0, 0x7f, 0xff})
	f.Fuzz(func(t *testing.T, codec uint8, p []byte) {
		c := frame.Codec(codec % 6)
		rate := 8000
		if c == frame.CodecOpus {
			rate = 48000
		}
		d, err := NewDecoder(c, rate)
		if err != nil {
			return
		}
		out, err := d.Decode(p, nil)
		limit := 2 * len(p) // G.722: two samples per byte; G.711 one; L16 half
		if c == frame.CodecOpus {
			limit = maxOpusFrame
		}
		if err == nil && len(out) > limit {
			t.Fatalf("%d samples from %d bytes", len(out), len(p))
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	for _, c := range []struct {
		name  string
		codec frame.Codec
		rate  int
		p     [][]byte
	}{{"pcmu", frame.CodecPCMU, 8000, [][]byte{make([]byte, 160)}}, {"pcma", frame.CodecPCMA, 8000, [][]byte{make([]byte, 160)}},
		{"l16-16k", frame.CodecL16, 16000, [][]byte{make([]byte, 640)}},
		{"g722", frame.CodecG722, 8000, [][]byte{readFile(b, "testdata/g722-speech.g722")[:160]}},
		{"opus-silk-48k", frame.CodecOpus, 48000, readPackets(b, "opus-silk12k.pkts")},
		{"opus-hybrid-48k", frame.CodecOpus, 48000, readPackets(b, "opus-hybrid32k.pkts")},
		{"opus-hybrid-16k", frame.CodecOpus, 16000, readPackets(b, "opus-hybrid32k.pkts")},
		{"opus-hybrid-8k", frame.CodecOpus, 8000, readPackets(b, "opus-hybrid32k.pkts")},
		{"opus-silk-16k", frame.CodecOpus, 16000, readPackets(b, "opus-silk12k.pkts")},
		{"opus-silk-8k", frame.CodecOpus, 8000, readPackets(b, "opus-silk12k.pkts")}} {
		b.Run(c.name, func(b *testing.B) {
			d := mustDecoder(b, c.codec, c.rate)
			dst := make([]int16, 0, 6000)
			b.ReportAllocs()
			i := 0
			c0 := cpuTime()
			for b.Loop() {
				dst, _ = d.Decode(c.p[i%len(c.p)], dst[:0])
				i++
			}
			// CPU time, not wall time: on a shared machine it is what the figures can rest on.
			b.ReportMetric(float64(cpuTime()-c0)/float64(b.N), "cpu-ns/frame")
		})
	}
}

// cpuTime returns the CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func readFile(t testing.TB, p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
