package proc

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/wav"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
)

func recordOpts(dir string) map[string]Options { return map[string]Options{"record": {"dir": dir}} }

// recordCall plays rec through the record processor and returns the finished file's audio.
func recordedAudio(t *testing.T, rec *filesrc.Recording, lose func(int, uint32) bool) (*wav.Audio, Recording, string) {
	t.Helper()
	dir := t.TempDir()
	c := newFakeCall(rec, "rec-1")
	playFrames(start(t, c, []string{"record", "summary"}, recordOpts(dir)), rec, lose)
	evs := c.of("recording")
	if len(evs) != 1 {
		t.Fatalf("%d recording events", len(evs))
	}
	r := evs[0].(Recording)
	if r.Error != "" {
		t.Fatal(r.Error)
	}
	if want := filepath.Join(dir, "acme", "rec-1-e1.wav"); r.Path != want {
		t.Fatalf("path %q, want %q", r.Path, want)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "acme", ".*"))
	if len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	a, err := wav.ReadFile(r.Path)
	if err != nil {
		t.Fatal(err)
	}
	if sum := c.of("summary"); len(sum) != 1 || sum[0].(Summary).Recording == nil {
		t.Fatalf("summary without the recording: %v", sum)
	}
	return a, r, dir
}

// concat joins a leg's payloads.
func concat(frames [][]byte) []byte { return bytes.Join(frames, nil) }

// TestRecordG711SampleExact records a two-leg PCMU call with frames lost on each leg: every
// sample that arrived is byte-exact in its channel and every lost frame is μ-law silence.
func TestRecordG711SampleExact(t *testing.T) {
	speech, _ := readPCM(t, "testdata/speech.wav")
	digits, _ := readPCM(t, "testdata/dtmf-normal.wav")
	digits = append(digits, make([]int16, len(speech)-len(digits))...)
	rec := multi(t, [][]int16{speech, digits}, 8000, true)
	lost := func(leg int, seq uint32) bool { return (leg == 0 && seq == 30) || (leg == 1 && seq >= 10 && seq <= 12) }
	a, r, _ := recordedAudio(t, rec, lost)
	if a.Format != wav.FormatMuLaw || a.Rate != 8000 || len(a.Channels) != 2 || r.Format != "pcmu" {
		t.Fatalf("format %d rate %d channels %d (%s)", a.Format, a.Rate, len(a.Channels), r.Format)
	}
	for leg := range 2 {
		want := concat(rec.Frames[leg])
		for s := uint32(0); s < uint32(rec.Len()); s++ {
			if lost(leg, s) {
				for i := range 160 {
					want[int(s)*160+i] = 0xFF
				}
			}
		}
		if !bytes.Equal(a.Channels[leg], want) {
			t.Errorf("leg %d: recording differs from input (%d bytes, want %d)", leg, len(a.Channels[leg]), len(want))
		}
	}
	if r.Samples != int64(rec.Len()*160) || r.Channels[1] != "agent" {
		t.Errorf("event %+v", r)
	}
}

// TestRecordL16SampleExact records 8 kHz and 16 kHz L16 calls.
func TestRecordL16SampleExact(t *testing.T) {
	speech, _ := readPCM(t, "testdata/speech.wav")
	for _, rate := range []int{8000, 16000} {
		half := append(append([]int16{}, speech[len(speech)/2:]...), make([]int16, len(speech)-len(speech)/2-len(speech)/2)...)
		half = append(half, speech[:len(speech)/2]...)
		rec := multi(t, [][]int16{speech, half}, rate, false)
		a, r, _ := recordedAudio(t, rec, func(leg int, seq uint32) bool { return leg == 1 && seq == 5 })
		if a.Format != wav.FormatPCM || a.Rate != rate || r.Format != "pcm16" {
			t.Fatalf("format %d rate %d", a.Format, a.Rate)
		}
		for leg := range 2 {
			want := concat(rec.Frames[leg])
			if leg == 1 {
				clear(want[5*rate/50*2 : 6*rate/50*2])
			}
			if !bytes.Equal(a.Channels[leg], want) {
				t.Errorf("%d Hz leg %d: recording differs from input", rate, leg)
			}
		}
	}
}

// TestRecordMixedCodecs records a PCMU leg with an L16 16 kHz leg as PCM16 at 16 kHz; the L16
// leg stays exact.
func TestRecordMixedCodecs(t *testing.T) {
	speech, _ := readPCM(t, "testdata/speech.wav")
	a := multi(t, [][]int16{speech}, 8000, true)
	b := multi(t, [][]int16{append(speech, speech...)}, 16000, false) // same duration at 16 kHz
	rec := &filesrc.Recording{Codec: frame.CodecPCMU, Rate: 8000, Frames: [][][]byte{a.Frames[0], b.Frames[0]}}
	c := newFakeCall(rec, "mixed")
	c.spec.Legs[1].Codec, c.spec.Legs[1].Rate = frame.CodecL16, 16000
	dir := t.TempDir()
	hs := start(t, c, []string{"record"}, recordOpts(dir))
	for i := 0; i < rec.Len(); i++ {
		for leg, r := range []*filesrc.Recording{a, b} {
			f := Frame{Header: frame.Header{Codec: r.Codec, Leg: uint8(leg), SampleRate: uint32(r.Rate), Seq: uint32(i)}, Payload: r.Frames[0][i]}
			for _, h := range hs {
				h.Frame(&f)
			}
		}
	}
	hs[0].Stop(StopReleased)
	ev := c.of("recording")[0].(Recording)
	out, err := wav.ReadFile(ev.Path)
	if err != nil {
		t.Fatal(err)
	}
	if out.Rate != 16000 || out.Format != wav.FormatPCM || out.Samples() != rec.Len()*320 {
		t.Fatalf("rate %d format %d samples %d", out.Rate, out.Format, out.Samples())
	}
	if !bytes.Equal(out.Channels[1], concat(b.Frames[0])) {
		t.Error("the L16 16 kHz leg is not exact")
	}
	// The upsampled μ-law leg carries the same speech: its energy is within 1 dB.
	e := func(p []byte) float64 {
		var s float64
		for i := 0; i+1 < len(p); i += 2 {
			v := float64(int16(binary.LittleEndian.Uint16(p[i:])))
			s += v * v
		}
		return s
	}
	if r := e(out.Channels[0]) / e(out.Channels[1]); r < 0.79 || r > 1.26 {
		t.Errorf("upsampled leg energy ratio %.2f", r)
	}
}

// TestRecordNeverHalfWritten checks that until Stop only the temporary file exists.
func TestRecordNeverHalfWritten(t *testing.T) {
	speech, _ := readPCM(t, "testdata/speech.wav")
	rec := mono(t, speech, 8000, true)
	dir := t.TempDir()
	c := newFakeCall(rec, "crash")
	hs := start(t, c, []string{"record"}, recordOpts(dir))
	for i := 0; i < rec.Len(); i++ {
		f := Frame{Header: frame.Header{Codec: rec.Codec, SampleRate: 8000, Seq: uint32(i)}, Payload: rec.Frames[0][i]}
		hs[0].Frame(&f)
	}
	final := filepath.Join(dir, "acme", "crash-e1.wav")
	if _, err := os.Stat(final); !os.IsNotExist(err) {
		t.Fatalf("final file exists before Stop: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "acme", ".crash-e1.wav.part")); err != nil {
		t.Fatalf("no temporary file: %v", err)
	}
	hs[0].Stop(StopShutdown)
	if _, err := os.Stat(final); err != nil {
		t.Fatal(err)
	}
}

func TestRecordOptions(t *testing.T) {
	for _, o := range []Options{{"format": "mp3"}, {"rate": "11"}, {"window_ms": "10"}, {"dri": "/tmp"}} {
		if _, err := Build([]string{"record"}, map[string]Options{"record": o}); err == nil {
			t.Errorf("options %v accepted", o)
		}
	}
	if safeName("../x") != "_.._x" || safeName(".hidden") != "_.hidden" {
		t.Errorf("safeName: %q %q", safeName("../x"), safeName(".hidden"))
	}
}

// twoLegPCMU is a two-leg PCMU call spec for crafted frames.
func twoLegPCMU(call string) *fakeCall {
	return &fakeCall{spec: session.Spec{ID: session.ID{Tenant: "acme", Call: call},
		Legs: []session.Leg{{Index: 0, Name: "caller", Codec: frame.CodecPCMU, Rate: 8000}, {Index: 1, Name: "agent", Codec: frame.CodecPCMU, Rate: 8000}}},
		log: zerolog.Nop()}
}

// pcmuFrame is a 20 ms PCMU frame whose every byte is v, received at recv (unix nanos).
func pcmuFrame(leg uint8, seq uint32, recv int64, v byte) *Frame {
	return &Frame{Header: frame.Header{Codec: frame.CodecPCMU, Leg: leg, SampleRate: 8000, Epoch: 1, Seq: seq, DurationUS: 20000, PayloadLen: 160},
		Payload: bytes.Repeat([]byte{v}, 160), Received: recv}
}

// feed gives each handler the frame.
func feed(hs []Handler, f *Frame) {
	for _, h := range hs {
		h.Frame(f)
	}
}

func stopAll(hs []Handler) {
	for _, h := range hs {
		h.Stop(StopEnd)
	}
}

// oneRecording returns the call's only recording event.
func oneRecording(t *testing.T, c *fakeCall) Recording {
	t.Helper()
	evs := c.of("recording")
	if len(evs) != 1 {
		t.Fatalf("%d recording events, want 1", len(evs))
	}
	return evs[0].(Recording)
}

const frameNS = int64(20 * time.Millisecond)

// TestRecordForwardJumpBounded drives the recorder with crafted frames: a far-forward sequence
// number, repeated jumps just under the slack, a jump both legs make together and a silence
// that real time covers. Only the last is written as silence; the others are discontinuities,
// and the file never runs ahead of the wall time the frames took.
func TestRecordForwardJumpBounded(t *testing.T) {
	dir := t.TempDir()
	c := twoLegPCMU("jump")
	hs := start(t, c, []string{"record"}, recordOpts(dir))
	t0 := time.Now().UnixNano()
	seq := [2]uint32{}
	now := t0
	// step sends one frame on each leg at the same wall time; jump adds to a leg's sequence first.
	step := func(jump [2]uint32, v byte) {
		now += frameNS
		for leg := range 2 {
			seq[leg] += jump[leg]
			feed(hs, pcmuFrame(uint8(leg), seq[leg], now, v+byte(leg)))
			seq[leg]++
		}
	}
	for range 100 { // 2 s of audio
		step([2]uint32{}, 10)
	}
	// One far-forward frame on leg 0 (one hour), announced by the worker as a resync.
	hs[0].(GapHandler).Gap(Gap{Leg: 0, From: seq[0], To: seq[0] + 180_000 - 1, Cause: CauseResync})
	step([2]uint32{180_000, 0}, 20)
	for range 50 {
		step([2]uint32{}, 30)
	}
	// 50 jumps of 1.9 s, one every 20 ms, on both legs together.
	for range 50 {
		step([2]uint32{95, 95}, 40)
	}
	// A silence of 10 s that real time covers: no frame for 10 s, then the sequence 10 s on.
	now += int64(10 * time.Second)
	step([2]uint32{499, 499}, 50)
	for range 10 {
		step([2]uint32{}, 60)
	}
	stopAll(hs)

	r := oneRecording(t, c)
	if r.Status != RecComplete || r.Error != "" {
		t.Fatalf("status %s: %s", r.Status, r.Error)
	}
	wall := (now - t0) / int64(time.Millisecond)
	if r.DurationMS > wall+int64(fillSlack/time.Millisecond) {
		t.Fatalf("%d ms recorded over %d ms of wall time", r.DurationMS, wall)
	}
	if r.DiscontinuityCount < 51 || len(r.Discontinuities) != maxDiscontinuities {
		t.Fatalf("%d discontinuities (%d listed)", r.DiscontinuityCount, len(r.Discontinuities))
	}
	d := r.Discontinuities[0]
	if d.Leg != 0 || d.Cause != CauseResync || d.SkippedMS != 3600_000 || d.AtMS != 2000 {
		t.Fatalf("first discontinuity %+v", d)
	}
	if r.Discontinuities[1].Cause != "sequence_jump" {
		t.Fatalf("second discontinuity %+v", r.Discontinuities[1])
	}
	a, err := wav.ReadFile(r.Path)
	if err != nil {
		t.Fatal(err)
	}
	// Each value must sit in both channels at the same sample (legs that jumped together stay
	// aligned), and the 10 s silence is there as μ-law silence before the 60s.
	at := func(ch []byte, v byte) int { return bytes.IndexByte(ch, v) }
	for _, v := range []byte{10, 30, 40, 50, 60} {
		if p0, p1 := at(a.Channels[0], v), at(a.Channels[1], v+1); p0 < 0 || p0 != p1 {
			t.Errorf("value %d at sample %d on leg 0, %d on leg 1", v, p0, p1)
		}
	}
	if p := at(a.Channels[0], 20); p != 2*8000 {
		t.Errorf("the jumped frame is at sample %d, want 16000 (right after the first 2 s)", p)
	}
	last40 := bytes.LastIndexByte(a.Channels[0], 40)
	if silence := at(a.Channels[0], 50) - last40 - 1; silence < 9900*8 || silence > 10100*8 {
		t.Errorf("%d samples of silence for the 10 s pause", silence)
	}
}

// TestRecordSizeLimitWhileWriting lowers the WAV size limit: the recorder stops at it as it
// writes (the event comes before Stop), and the file keeps everything up to the limit.
func TestRecordSizeLimitWhileWriting(t *testing.T) {
	defer func(v int64) { maxDataBytes = v }(maxDataBytes)
	maxDataBytes = 3 * 8000 * 2 // 3 s of two-leg μ-law
	c := twoLegPCMU("big")
	hs := start(t, c, []string{"record"}, recordOpts(t.TempDir()))
	now := time.Now().UnixNano()
	for s := range uint32(500) { // 10 s
		now += frameNS
		feed(hs, pcmuFrame(0, s, now, byte(s%100)))
		feed(hs, pcmuFrame(1, s, now, byte(s%100)))
	}
	r := oneRecording(t, c) // before Stop
	stopAll(hs)
	if len(c.of("recording")) != 1 {
		t.Fatal("a second recording event at Stop")
	}
	if r.Status != RecPartial || r.Reason != "size_limit" || r.Samples != 3*8000 {
		t.Fatalf("%+v", r)
	}
	a, err := wav.ReadFile(r.Path)
	if err != nil {
		t.Fatal(err)
	}
	if a.Samples() != 3*8000 || a.Channels[1][3*8000-1] != byte(149%100) {
		t.Fatalf("%d samples in the file", a.Samples())
	}
}

// TestRecordWriteErrorKeepsWritten breaks the file's descriptor mid-call: the recording ends
// with status partial, and the file under its final name holds every sample written before.
func TestRecordWriteErrorKeepsWritten(t *testing.T) {
	speech, _ := readPCM(t, "testdata/speech.wav")
	rec := mono(t, speech, 8000, true)
	c := newFakeCall(rec, "broken")
	hs := start(t, c, []string{"record", "summary"}, recordOpts(t.TempDir()))
	r0 := hs[0].(*recordCall)
	now := time.Now().UnixNano()
	for i := 0; i < rec.Len(); i++ {
		if i == 250 { // 5 s in: the window has been written out up to 3 s
			r0.f.Close()
		}
		now += frameNS
		f := Frame{Header: frame.Header{Codec: rec.Codec, SampleRate: 8000, Seq: uint32(i)}, Payload: rec.Frames[0][i], Received: now}
		feed(hs, &f)
	}
	stopAll(hs)
	r := oneRecording(t, c)
	if r.Status != RecPartial || r.Reason != "write" || r.Error == "" || r.Path == "" {
		t.Fatalf("%+v", r)
	}
	if r.Samples < 8000 || r.Samples >= int64(rec.Len()*160) {
		t.Fatalf("%d samples kept", r.Samples)
	}
	a, err := wav.ReadFile(r.Path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Channels[0], concat(rec.Frames[0])[:r.Samples]) {
		t.Fatal("the kept part differs from the input")
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(r.Path), ".*")); len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}
	if s := c.of("summary"); len(s) != 1 || s[0].(Summary).Recording.Status != RecPartial {
		t.Fatalf("summary %v", s)
	}
}

// TestRecordDiskBudget refuses new recordings past max_bytes (counting what this process wrote
// since the directory was counted) and below min_free, with an event and a metric.
func TestRecordDiskBudget(t *testing.T) {
	speech, _ := readPCM(t, "testdata/speech.wav")
	rec := mono(t, speech, 8000, true) // 61 KB as μ-law
	refused := testutil.ToFloat64(Recordings.WithLabelValues(RecRefused))
	run := func(call string, o Options) Recording {
		c := newFakeCall(rec, call)
		playFrames(start(t, c, []string{"record"}, map[string]Options{"record": o}), rec, nil)
		return oneRecording(t, c)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "old.wav"), make([]byte, 10_000), 0o640); err != nil {
		t.Fatal(err)
	}
	budget := Options{"dir": dir, "max_bytes": "64K"}
	if r := run("a", budget); r.Status != RecComplete {
		t.Fatalf("first recording: %+v", r)
	}
	r := run("b", budget)
	if r.Status != RecRefused || r.Reason != "disk_budget" || r.Path != "" || r.Error == "" {
		t.Fatalf("second recording past max_bytes: %+v", r)
	}
	if _, err := os.Stat(filepath.Join(dir, "acme", ".b-e1.wav.part")); !os.IsNotExist(err) {
		t.Fatalf("a refused recording left a file: %v", err)
	}
	dir2 := t.TempDir()
	if r := run("c", Options{"dir": dir2, "min_free": "1000000T"}); r.Status != RecRefused || r.Reason != "disk_budget" {
		t.Fatalf("recording below min_free: %+v", r)
	}
	if r := run("d", Options{"dir": dir2, "min_free": "1M"}); r.Status != RecComplete {
		t.Fatalf("recording with room: %+v", r)
	}
	if got := testutil.ToFloat64(Recordings.WithLabelValues(RecRefused)) - refused; got != 2 {
		t.Fatalf("%v refusals counted, want 2", got)
	}
	for _, v := range []string{"-1", "1X", "12.5G", "99999999999T"} {
		if _, err := Build([]string{"record"}, map[string]Options{"record": {"dir": dir, "max_bytes": v}}); err == nil {
			t.Errorf("max_bytes=%s accepted", v)
		}
	}
	if n, err := parseBytes("k", "20GiB"); err != nil || n != 20<<30 {
		t.Errorf("20GiB = %d, %v", n, err)
	}
}

// TestRecordDirUnusable: a record dir that cannot be created stops the processor from being
// built (the worker does not start); a tenant directory that cannot be created is a failed
// recording event per call and a metric, and the call goes on.
func TestRecordDirUnusable(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o640); err != nil {
		t.Fatal(err)
	}
	_, err := Build([]string{"record"}, recordOpts(filepath.Join(file, "rec")))
	if err == nil || !strings.Contains(err.Error(), "record: dir") {
		t.Fatalf("Build with a dir under a file: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "acme"), nil, 0o640); err != nil { // the tenant's directory
		t.Fatal(err)
	}
	failed := testutil.ToFloat64(Recordings.WithLabelValues(RecFailed))
	speech, _ := readPCM(t, "testdata/speech.wav")
	rec := mono(t, speech, 8000, true)
	for _, call := range []string{"x", "y"} {
		c := newFakeCall(rec, call)
		playFrames(start(t, c, []string{"record", "levels", "summary"}, recordOpts(dir)), rec, nil)
		r := oneRecording(t, c)
		if r.Status != RecFailed || r.Reason != "open" || r.Error == "" || r.Path != "" {
			t.Fatalf("%+v", r)
		}
		if s := c.of("summary"); len(s) != 1 || s[0].(Summary).Levels == nil || s[0].(Summary).Recording.Status != RecFailed {
			t.Fatalf("summary %v", s)
		}
	}
	if got := testutil.ToFloat64(Recordings.WithLabelValues(RecFailed)) - failed; got != 2 {
		t.Fatalf("%v failures counted, want 2", got)
	}
}

// crashedPart records 5 s of a call and "crashes": the descriptor is closed without Stop, so
// the .part file holds the header (sizes 0) and the 3 s written so far. It returns its path.
func crashedPart(t *testing.T, dir string) (string, []byte) {
	t.Helper()
	speech, _ := readPCM(t, "testdata/speech.wav")
	rec := mono(t, speech, 8000, true)
	c := newFakeCall(rec, "crash")
	hs := start(t, c, []string{"record"}, recordOpts(dir))
	for i := range 250 {
		f := Frame{Header: frame.Header{Codec: rec.Codec, SampleRate: 8000, Seq: uint32(i)}, Payload: rec.Frames[0][i]}
		hs[0].Frame(&f)
	}
	hs[0].(*recordCall).f.Close()
	c.Shared().Release()
	return filepath.Join(dir, "acme", ".crash-e1.wav.part"), concat(rec.Frames[0])
}

// TestRecordRecoversCrashParts: at setup, a .part file a crash left is finished up to its last
// whole sample and renamed (a truncated one too), one without audio is removed, and one a live
// recording holds is left alone.
func TestRecordRecoversCrashParts(t *testing.T) {
	part, want := crashedPart(t, t.TempDir())
	b, err := os.ReadFile(part)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 46+3*8000 {
		t.Fatalf(".part holds %d bytes", len(b))
	}
	dir := t.TempDir() // a directory this process has not set up
	acme := filepath.Join(dir, "acme")
	os.MkdirAll(acme, 0o750)
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(acme, name), b, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	write(".whole-e1.wav.part", b)
	write(".cut-e2.wav.part", b[:46+12345]) // a crash in the middle of a write
	write(".empty-e1.wav.part", b[:30])
	recovered := testutil.ToFloat64(Recordings.WithLabelValues(RecRecovered))
	var logs bytes.Buffer
	c := newFakeCall(mono(t, make([]int16, 800), 8000, true), "next")
	c.log = zerolog.New(&logs)
	playFrames(start(t, c, []string{"record"}, recordOpts(dir)), mono(t, make([]int16, 800), 8000, true), nil)
	for name, n := range map[string]int{"whole-e1.wav": 3 * 8000, "cut-e2.wav": 12345} {
		a, err := wav.ReadFile(filepath.Join(acme, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if a.Samples() != n || !bytes.Equal(a.Channels[0], want[:n]) {
			t.Errorf("%s: %d samples, want %d of the call's audio", name, a.Samples(), n)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(acme, ".*")); len(left) != 0 {
		t.Fatalf("left: %v", left)
	}
	if got := testutil.ToFloat64(Recordings.WithLabelValues(RecRecovered)) - recovered; got != 2 {
		t.Errorf("%v recoveries counted", got)
	}
	for _, s := range []string{"whole-e1.wav", "cut-e2.wav", ".empty-e1.wav.part", `"status":"removed"`} {
		if !strings.Contains(logs.String(), s) {
			t.Errorf("log does not name %s:\n%s", s, logs.String())
		}
	}

	// A live recording's .part, seen by another worker's setup (the same directory under
	// another name), is left alone and finishes normally.
	live := t.TempDir()
	speech, _ := readPCM(t, "testdata/speech.wav")
	rec := mono(t, speech, 8000, true)
	lc := newFakeCall(rec, "live")
	hs := start(t, lc, []string{"record"}, recordOpts(live))
	for i := range 200 {
		f := Frame{Header: frame.Header{Codec: rec.Codec, SampleRate: 8000, Seq: uint32(i)}, Payload: rec.Frames[0][i]}
		hs[0].Frame(&f)
	}
	alias := filepath.Join(t.TempDir(), "alias")
	if err := os.Symlink(live, alias); err != nil {
		t.Fatal(err)
	}
	if _, err := Build([]string{"record"}, recordOpts(alias)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(live, "acme", ".live-e1.wav.part")); err != nil {
		t.Fatalf("setup touched a live recording: %v", err)
	}
	for i := 200; i < rec.Len(); i++ {
		f := Frame{Header: frame.Header{Codec: rec.Codec, SampleRate: 8000, Seq: uint32(i)}, Payload: rec.Frames[0][i]}
		hs[0].Frame(&f)
	}
	hs[0].Stop(StopEnd)
	if r := oneRecording(t, lc); r.Status != RecComplete || r.Samples != int64(rec.Len()*160) {
		t.Fatalf("live recording: %+v", r)
	}
}

// TestRecordFinishFailureKeepsPart: when the rename fails (a directory holds the final name),
// the event says failed/finish and the .part stays, complete with its header; the next setup of
// the directory recovers it under another name.
func TestRecordFinishFailureKeepsPart(t *testing.T) {
	speech, _ := readPCM(t, "testdata/speech.wav")
	rec := mono(t, speech, 8000, true)
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "acme", "blocked-e1.wav"), 0o750); err != nil {
		t.Fatal(err)
	}
	c := newFakeCall(rec, "blocked")
	playFrames(start(t, c, []string{"record"}, recordOpts(dir)), rec, nil)
	r := oneRecording(t, c)
	if r.Status != RecFailed || r.Reason != "finish" || r.Path != "" || !strings.Contains(r.Error, "kept for recovery") {
		t.Fatalf("%+v", r)
	}
	alias := filepath.Join(t.TempDir(), "alias") // the same directory, new to this process
	if err := os.Symlink(dir, alias); err != nil {
		t.Fatal(err)
	}
	if _, err := Build([]string{"record"}, recordOpts(alias)); err != nil {
		t.Fatal(err)
	}
	a, err := wav.ReadFile(filepath.Join(dir, "acme", "blocked-e1-recovered.wav"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Channels[0], concat(rec.Frames[0])) {
		t.Fatal("the recovered recording differs from the call")
	}
}
