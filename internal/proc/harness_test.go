package proc

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/callrouter/callrouter/internal/audio"
	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/wav"
	"github.com/rs/zerolog"
)

// fakeCall is a proc.Call that records the events its handlers emit.
type fakeCall struct {
	spec   session.Spec
	log    zerolog.Logger
	mu     sync.Mutex
	events []emitted
	sh     *Shared
}

type emitted struct {
	kind string
	data any
	json []byte
}

func newFakeCall(rec *filesrc.Recording, call string) *fakeCall {
	return &fakeCall{spec: rec.Spec("acme", call, nil), log: zerolog.Nop()}
}

func (f *fakeCall) Spec() *session.Spec  { return &f.spec }
func (f *fakeCall) Epoch() uint32        { return 1 }
func (f *fakeCall) Worker() string       { return "w1" }
func (f *fakeCall) Pool() string         { return "default" }
func (f *fakeCall) Log() *zerolog.Logger { return &f.log }
func (f *fakeCall) Shared() *Shared {
	if f.sh == nil {
		f.sh = NewShared(len(f.spec.Legs))
	}
	return f.sh
}
func (f *fakeCall) Emit(kind string, data any) {
	b, err := json.Marshal(data)
	if err != nil {
		panic(err)
	}
	f.mu.Lock()
	f.events = append(f.events, emitted{kind, data, b})
	f.mu.Unlock()
}

func (f *fakeCall) of(kind string) []any {
	var out []any
	for _, e := range f.events {
		if e.kind == kind {
			out = append(out, e.data)
		}
	}
	return out
}

// start builds the named processors with options and starts them on call.
func start(t testing.TB, c Call, names []string, opts map[string]Options) []Handler {
	t.Helper()
	ps, err := Build(names, opts)
	if err != nil {
		t.Fatal(err)
	}
	var hs []Handler
	for _, p := range ps {
		h, err := p.Start(c)
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	return hs
}

// playFrames delivers a recording's frames to handlers as the worker would, leg by leg in
// lock-step, skipping frames for which lose returns true (reporting them as gaps before the
// next frame), then stops the handlers.
func playFrames(hs []Handler, rec *filesrc.Recording, lose func(leg int, seq uint32) bool) {
	next := make([]uint32, len(rec.Frames))
	spf := uint32(rec.Rate / 50)
	for i := 0; i < rec.Len(); i++ {
		for leg := range rec.Frames {
			seq := uint32(i)
			if lose != nil && lose(leg, seq) {
				continue
			}
			if seq > next[leg] {
				for _, h := range hs {
					if g, ok := h.(GapHandler); ok {
						g.Gap(Gap{Leg: uint8(leg), From: next[leg], To: seq - 1, Cause: CauseNetwork})
					}
				}
			}
			next[leg] = seq + 1
			f := Frame{Header: frame.Header{Codec: rec.Codec, Leg: uint8(leg), SampleRate: uint32(rec.Rate), Epoch: 1,
				Seq: seq, MediaTS: seq * spf, DurationUS: 20000}, Payload: rec.Frames[leg][i]}
			f.Header.PayloadLen = uint16(len(f.Payload))
			for _, h := range hs {
				h.Frame(&f)
			}
		}
	}
	for _, h := range hs {
		h.Stop(StopEnd)
	}
}

// mono returns a one-leg L16 (or, with mulaw, PCMU) recording of samples at rate.
func mono(t testing.TB, samples []int16, rate int, mulaw bool) *filesrc.Recording {
	return multi(t, [][]int16{samples}, rate, mulaw)
}

func multi(t testing.TB, legs [][]int16, rate int, mulaw bool) *filesrc.Recording {
	t.Helper()
	a := &wav.Audio{Format: wav.FormatPCM, Rate: rate, BitsPerSample: 16}
	if mulaw {
		a.Format, a.BitsPerSample = wav.FormatMuLaw, 8
	}
	for _, s := range legs {
		if mulaw {
			b := make([]byte, len(s))
			for i, v := range s {
				b[i] = audio.EncodeMuLaw(v)
			}
			a.Channels = append(a.Channels, b)
		} else {
			a.Channels = append(a.Channels, audio.AppendL16(nil, s))
		}
	}
	r, err := filesrc.FromAudio(a, 0)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// readPCM reads a WAV file's first channel as 16-bit PCM at its own rate.
func readPCM(t testing.TB, path string) ([]int16, int) {
	t.Helper()
	a, err := wav.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []int16
	switch a.Format {
	case wav.FormatMuLaw:
		for _, b := range a.Channels[0] {
			out = append(out, audio.MuLaw(b))
		}
	case wav.FormatALaw:
		for _, b := range a.Channels[0] {
			out = append(out, audio.ALaw(b))
		}
	default:
		d, _ := audio.NewDecoder(frame.CodecL16, a.Rate)
		out, _ = d.Decode(a.Channels[0], nil)
	}
	return out, a.Rate
}

func have(tool string) bool {
	_, err := exec.LookPath(tool)
	return err == nil
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// tone returns n samples of the sum of sines at the given frequencies and RMS levels (dBFS each).
func tone(rate, n int, freqs, levels []float64) []int16 {
	out := make([]int16, n)
	for i := range out {
		var v float64
		for k, f := range freqs {
			a := math.Sqrt2 * 32767 * math.Pow(10, levels[k]/20)
			v += a * math.Sin(2*math.Pi*f*float64(i)/float64(rate))
		}
		out[i] = int16(max(-32768, min(32767, v)))
	}
	return out
}

// Ground-truth fixtures. The committed ones under testdata/ were made by the generators below
// (CALLROUTER_REGEN_FIXTURES=1 go test -run TestRegenerateFixtures ./internal/proc/); tests
// also run the generators into t.TempDir() with other text and digits when the tools exist.

// speechTruth is a speech fixture's ground truth: where each utterance starts and ends.
type speechTruth struct {
	Rate     int        `json:"rate"`
	Segments [][2]int64 `json:"segments"` // sample ranges [start, end)
}

// genSpeech speaks each phrase with espeak-ng, trims the digital silence around it, and joins
// the phrases at 8 kHz with the given silences (ms) before, between and after them.
func genSpeech(t testing.TB, dir, name string, phrases []string, silences []int) (string, speechTruth) {
	t.Helper()
	truth := speechTruth{Rate: 8000}
	var all []int16
	pad := func(ms int) { all = append(all, make([]int16, ms*8)...) }
	pad(silences[0])
	for i, p := range phrases {
		raw := filepath.Join(dir, fmt.Sprintf("%s-%d-raw.wav", name, i))
		s8 := filepath.Join(dir, fmt.Sprintf("%s-%d-8k.wav", name, i))
		run(t, "espeak-ng", "-w", raw, p)
		run(t, "sox", raw, "-r", "8000", "-b", "16", s8)
		pcm, _ := readPCM(t, s8)
		first, last := -1, -1
		for j, v := range pcm {
			if v > 16 || v < -16 {
				if first < 0 {
					first = j
				}
				last = j
			}
		}
		pcm = pcm[first : last+1]
		truth.Segments = append(truth.Segments, [2]int64{int64(len(all)), int64(len(all) + len(pcm))})
		all = append(all, pcm...)
		pad(silences[i+1])
	}
	out := filepath.Join(dir, name+".wav")
	writeWAV(t, out, wav.FormatPCM, 8000, 16, [][]byte{audio.AppendL16(nil, all)})
	b, _ := json.MarshalIndent(truth, "", " ")
	if err := os.WriteFile(filepath.Join(dir, name+".json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return out, truth
}

func writeWAV(t testing.TB, path string, format, rate, bits int, ch [][]byte) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := wav.Write(f, format, rate, bits, ch); err != nil {
		t.Fatal(err)
	}
}

// digitTone is one DTMF digit of a sox-generated sequence.
type digitTone struct {
	Digit        byte
	OnMS, OffMS  int
	RowDB, ColDB float64 // RMS level of each tone, dBFS
}

var rowCol = map[byte][2]float64{}

func init() {
	for i := range len(dtmfKeys) {
		rowCol[dtmfKeys[i]] = [2]float64{dtmfFreqs[i/4], dtmfFreqs[4+i%4]}
	}
}

// genDTMF makes a DTMF sequence with sox (one synth per digit) as an 8 kHz μ-law WAV.
func genDTMF(t testing.TB, dir, name string, digits []digitTone, leadMS int) string {
	t.Helper()
	all := make([]int16, leadMS*8)
	for i, d := range digits {
		f := rowCol[d.Digit]
		p := filepath.Join(dir, fmt.Sprintf("%s-%d.wav", name, i))
		// A full-scale sine is -3 dBFS RMS, so a tone at L dBFS has gain 10^((L+3)/20).
		g := func(db float64) string { return fmt.Sprintf("%.4f", math.Pow(10, (db+3)/20)) }
		run(t, "sox", "-n", "-r", "8000", "-c", "2", "-b", "16", p, "synth", fmt.Sprintf("%.3f", float64(d.OnMS)/1000),
			"sine", fmt.Sprint(f[0]), "sine", fmt.Sprint(f[1]), "remix", "1v"+g(d.RowDB)+",2v"+g(d.ColDB))
		pcm, _ := readPCM(t, p)
		all = append(all, pcm...)
		all = append(all, make([]int16, d.OffMS*8)...)
	}
	b := make([]byte, len(all))
	for i, v := range all {
		b[i] = audio.EncodeMuLaw(v)
	}
	out := filepath.Join(dir, name+".wav")
	writeWAV(t, out, wav.FormatMuLaw, 8000, 8, [][]byte{b})
	return out
}

func digitsOf(ds []digitTone) string {
	var b strings.Builder
	for _, d := range ds {
		b.WriteByte(d.Digit)
	}
	return b.String()
}

func seq(digits string, on, off int, row, col float64) []digitTone {
	var out []digitTone
	for i := range len(digits) {
		out = append(out, digitTone{digits[i], on, off, row, col})
	}
	return out
}

// The committed fixtures.
var (
	speechPhrases  = []string{"Thank you for calling the support line", "Please hold while I look up your account", "Is there anything else"}
	speechSilences = []int{400, 1000, 700, 500}
	dtmfFixtures   = map[string][]digitTone{
		"dtmf-normal": seq("1234567890*#ABCD", 70, 60, -10, -10),
		"dtmf-low":    seq("5551234", 60, 60, -30, -32),
		"dtmf-twist":  append(seq("#9", 80, 80, -12, -18), seq("*0", 80, 80, -16, -11)...), // 6 dB reverse, 5 dB forward
		"dtmf-short":  seq("4826", 40, 40, -12, -12),                                       // Q.24's shortest tone and pause
	}
)

func TestRegenerateFixtures(t *testing.T) {
	if os.Getenv("CALLROUTER_REGEN_FIXTURES") == "" {
		t.Skip("set CALLROUTER_REGEN_FIXTURES=1 to rewrite testdata/ with espeak-ng and sox")
	}
	tmp := t.TempDir()
	p, _ := genSpeech(t, tmp, "speech", speechPhrases, speechSilences)
	copyFile(t, p, "testdata/speech.wav")
	copyFile(t, filepath.Join(tmp, "speech.json"), "testdata/speech.json")
	for name, ds := range dtmfFixtures {
		copyFile(t, genDTMF(t, tmp, name, ds, 200), "testdata/"+name+".wav")
	}
}

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func resample48(pcm, dst []int16) ([]int16, error) { return audio.Resample(pcm, 8000, 48000, dst) }

func encodeMu(v int16) byte { return audio.EncodeMuLaw(v) }

func pow10(x float64) float64 { return math.Pow(10, x) }
