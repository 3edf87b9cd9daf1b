package proc

import (
	"encoding/binary"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/rs/zerolog"
)

// nopCall is a Call whose events go nowhere, for benchmarks.
type nopCall struct {
	spec session.Spec
	log  zerolog.Logger
	n    int
	sh   *Shared
}

func (c *nopCall) Spec() *session.Spec  { return &c.spec }
func (c *nopCall) Epoch() uint32        { return 1 }
func (c *nopCall) Worker() string       { return "w1" }
func (c *nopCall) Pool() string         { return "default" }
func (c *nopCall) Log() *zerolog.Logger { return &c.log }
func (c *nopCall) Emit(string, any)     { c.n++ }
func (c *nopCall) Shared() *Shared {
	if c.sh == nil {
		c.sh = NewShared(len(c.spec.Legs))
	}
	return c.sh
}

// opusPackets reads the audio package's Opus fixture (20 ms packets of speech, hybrid mode).
func opusPackets(t testing.TB) [][]byte {
	b, err := os.ReadFile("../audio/testdata/opus-hybrid32k.pkts")
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

// benchStream is one leg's payloads in a codec.
type benchStream struct {
	name  string
	codec frame.Codec
	rate  int
	p     [][]byte
}

func benchStreams(b *testing.B) []benchStream {
	speech, _ := readPCM(b, "testdata/speech.wav")
	pcmu := mono(b, speech, 8000, true)
	l16 := mono(b, speech, 8000, false)
	return []benchStream{
		{"pcmu", frame.CodecPCMU, 8000, pcmu.Frames[0]},
		{"l16-8k", frame.CodecL16, 8000, l16.Frames[0]},
		{"g722", frame.CodecG722, 8000, g722Frames(b)},
		{"opus", frame.CodecOpus, 48000, opusPackets(b)},
	}
}

// cpuTime returns the CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkProcessor measures each processor alone on one leg of speech (its shared decoding
// included; "media" is decoding and resampling to 8 kHz alone, the baseline to subtract), and
// "all" the whole analysis pipeline. ns/op is per 20 ms frame.
func BenchmarkProcessor(b *testing.B) {
	for _, s := range benchStreams(b) {
		for _, names := range [][]string{{"media"}, {"accounting"}, {"speech"}, {"dtmf"}, {"levels"}, {"record"}, {"summary"},
			{"accounting", "speech", "dtmf", "levels", "record", "summary"}} {
			name := names[0]
			if len(names) > 1 {
				name = "all"
			}
			b.Run(s.name+"/"+name, func(b *testing.B) {
				c := &nopCall{spec: session.Spec{ID: session.ID{Tenant: "acme", Call: "bench"},
					Legs: []session.Leg{{Index: 0, Name: "caller", Codec: s.codec, Rate: uint32(s.rate)}}}}
				var hs []Handler
				var sh *Shared
				if name == "media" {
					sh = c.Shared().Acquire()
				} else {
					hs = start(b, c, names, recordOpts(b.TempDir()))
				}
				f := Frame{Header: frame.Header{Codec: s.codec, SampleRate: uint32(s.rate)}}
				b.ReportAllocs()
				i := 0
				c0 := cpuTime()
				for b.Loop() {
					f.Header.Seq = uint32(i)
					f.Payload = s.p[i%len(s.p)]
					if sh != nil {
						sh.Media.PCM(&f, 8000)
					}
					for _, h := range hs {
						h.Frame(&f)
					}
					i++
				}
				b.StopTimer()
				// CPU time per frame holds up better than wall time on a shared machine.
				b.ReportMetric(float64(cpuTime()-c0)/float64(b.N), "cpu-ns/frame")
				for _, h := range hs {
					h.Stop(StopEnd)
				}
				if sh != nil {
					sh.Release()
				}
			})
		}
	}
}

// TestPerFrameAllocs pins the steady-state per-frame path of every processor at zero
// allocations (a continuous tone: no events are due).
func TestPerFrameAllocs(t *testing.T) {
	rec := mono(t, tone(8000, 8000*4, []float64{440}, []float64{-20}), 8000, true)
	c := &nopCall{spec: rec.Spec("acme", "allocs", nil)}
	hs := start(t, c, []string{"accounting", "speech", "dtmf", "levels", "record", "summary"}, recordOpts(t.TempDir()))
	i := 0
	f := &Frame{} // the worker's own Frame escapes to the heap through the Handler interface
	step := func() {
		*f = Frame{Header: frame.Header{Codec: rec.Codec, SampleRate: 8000, Seq: uint32(i)}, Payload: rec.Frames[0][i%rec.Len()]}
		for _, h := range hs {
			h.Frame(f)
		}
		i++
	}
	for range 200 { // past the recording window's first flush and every buffer's growth
		step()
	}
	if a := testing.AllocsPerRun(500, step); a != 0 {
		t.Errorf("%.2f allocations per frame", a)
	}
	for _, h := range hs {
		h.Stop(StopEnd)
	}
	_ = filesrc.DefaultLegNames
}

// g722Frames cuts the audio package's G.722 fixture (ffmpeg-encoded speech) into 20 ms frames.
func g722Frames(t testing.TB) [][]byte {
	b, err := os.ReadFile("../audio/testdata/g722-speech.g722")
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for ; len(b) >= 160; b = b[160:] {
		out = append(out, b[:160])
	}
	return out
}
