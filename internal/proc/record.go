package proc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/callrouter/callrouter/internal/audio"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/wav"
)

func init() {
	Register("record", newRecord)
}

// RecordConfig configures the "record" processor ("record.dir=/var/lib/callrouter/rec").
type RecordConfig struct {
	Dir      string // recordings go to Dir/<tenant>/<call>-e<epoch>.wav
	Format   string // "auto" (the legs' own G.711 or L16 encoding when they share it) or "pcm16"
	Rate     int    // PCM16 rate when the legs must be decoded; 0 takes the highest leg rate
	WindowMS int    // how far one leg may run ahead of another before the other is filled with silence
	MaxBytes int64  // a new recording is refused while the files under Dir hold this many bytes (0: no limit)
	MinFree  int64  // a new recording is refused while Dir's file system has less free space (0: no limit)
}

// DefaultRecordConfig returns the defaults documented in docs/processors.md.
func DefaultRecordConfig() RecordConfig {
	return RecordConfig{Dir: filepath.Join(os.TempDir(), "callrouter-recordings"), Format: "auto", WindowMS: 2000}
}

// Validate reports a bad setting.
func (c RecordConfig) Validate() error {
	if c.Dir == "" {
		return errors.New("record: dir is empty")
	}
	if c.Format != "auto" && c.Format != "pcm16" {
		return fmt.Errorf("record: format %q, want auto or pcm16", c.Format)
	}
	if c.Rate < 0 || c.Rate > 48000 || c.Rate%50 != 0 {
		return fmt.Errorf("record: rate %d must be a multiple of 50 Hz up to 48000 (0 for automatic)", c.Rate)
	}
	if c.WindowMS < 100 {
		return fmt.Errorf("record: window_ms %d must be at least 100", c.WindowMS)
	}
	if c.MaxBytes < 0 || c.MinFree < 0 {
		return errors.New("record: max_bytes and min_free must not be negative")
	}
	return nil
}

// newRecord builds the processor and sets up its directory: a directory that cannot be created
// or written is an error here, so the worker does not start (rather than every call silently
// going unrecorded), and .part files a crash left are finished.
func newRecord(o Options) (Processor, error) {
	c := DefaultRecordConfig()
	if err := o.Only("dir", "format", "rate", "window_ms", "max_bytes", "min_free"); err != nil {
		return nil, err
	}
	if v := o["dir"]; v != "" {
		c.Dir = v
	}
	if v := o["format"]; v != "" {
		c.Format = v
	}
	var err error
	if c.Rate, err = o.Int("rate", c.Rate); err != nil {
		return nil, err
	}
	if c.WindowMS, err = o.Int("window_ms", c.WindowMS); err != nil {
		return nil, err
	}
	for _, b := range []struct {
		key string
		v   *int64
	}{{"max_bytes", &c.MaxBytes}, {"min_free", &c.MinFree}} {
		if v := o[b.key]; v != "" {
			if *b.v, err = parseBytes(b.key, v); err != nil {
				return nil, err
			}
		}
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	d, err := openRecDir(c.Dir, c.MaxBytes)
	if err != nil {
		return nil, err
	}
	return recordProc{cfg: c, dir: d}, nil
}

type recordProc struct {
	cfg RecordConfig
	dir *recDir
}

// Recording is the body of the "recording" event and the summary's "recording" section.
type Recording struct {
	Path       string   `json:"path,omitempty"`
	Status     string   `json:"status"`           // complete, partial, failed, refused
	Reason     string   `json:"reason,omitempty"` // why not complete: disk_budget, open, write, size_limit, finish
	Format     string   `json:"format"`           // pcmu, pcma or pcm16
	Rate       int      `json:"rate"`
	Channels   []string `json:"channels"` // leg names, in channel order
	Samples    int64    `json:"samples"`  // per channel
	DurationMS int64    `json:"duration_ms"`
	StartSeq   uint32   `json:"start_seq"`             // the sequence number at sample 0
	LateFrames int      `json:"late_frames,omitempty"` // frames that arrived after their place was written
	// Discontinuities are forward sequence jumps that real time did not cover: the leg went on
	// where the file was instead of writing the jump as silence (the first maxDiscontinuities).
	Discontinuities    []Discontinuity `json:"discontinuities,omitempty"`
	DiscontinuityCount int             `json:"discontinuity_count,omitempty"`
	SkippedMS          int64           `json:"skipped_ms,omitempty"` // the jumps' total, not written
	// PausedMS is the longest leg's span of secure pauses (frame.FlagPaused): their audio never
	// reached the worker; the file has silence there (or a discontinuity with cause paused).
	PausedMS int64  `json:"paused_ms,omitempty"`
	Error    string `json:"error,omitempty"`
}

// Discontinuity is one sequence jump that was not filled with silence.
type Discontinuity struct {
	Leg       uint8  `json:"leg"`
	Seq       uint32 `json:"seq"`        // the first sequence number after the jump
	AtMS      int64  `json:"at_ms"`      // where in the file that frame went
	SkippedMS int64  `json:"skipped_ms"` // the silence not written
	Cause     string `json:"cause"`      // the cause of the gap the worker reported before it, else sequence_jump
}

const (
	maxDiscontinuities = 16
	fillSlack          = 2 * time.Second // silence a jump may add beyond the wall time between frames
)

// maxDataBytes is the largest data chunk a WAV header can describe (a variable for tests).
var maxDataBytes int64 = 1<<32 - 64

// errSizeLimit ends a recording whose data chunk is full.
var errSizeLimit = errors.New("record: the recording reached the WAV size limit (4 GiB)")

type recLeg struct {
	started  bool
	lastSeq  uint32
	next     int64 // timeline position after the last sample written
	shift    int64 // samples taken off this leg's positions by discontinuities
	gapCause string
	paused   int64 // paused frames seen
}

type recordCall struct {
	cfg     RecordConfig
	dir     *recDir
	c       Call
	sh      *Shared
	f       *os.File
	tmp     string
	final   string
	format  int // wav.FormatPCM, FormatMuLaw, FormatALaw
	codec   frame.Codec
	bps     int // bytes per sample
	rate    int
	spf     int // samples per frame at rate
	chans   int
	hdrLen  int64
	silence byte

	win      []byte // interleaved samples from winStart; len = window samples × frame bytes
	winStart int64
	written  int64 // samples per channel written to the file
	end      int64 // highest timeline position filled
	origin   uint32
	haveOrig bool
	legs     []recLeg
	credit   int64 // samples of silence the file may still grow by (see Frame)
	lastWall int64 // unix nanos of the latest frame seen
	out      Recording
	done     bool // the file is finished (or was never opened) and the event published
	broken   bool // a write failed: finish through a new descriptor
}

// safeName maps a token to a file name component: subject tokens cannot hold '.', but a path
// separator or a leading dot must never reach the file system.
func safeName(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '/' || r == '\\' || r == 0 || r == ':' {
			return '_'
		}
		return r
	}, s)
	if s == "" || s[0] == '.' {
		s = "_" + s
	}
	return s
}

// Start opens the call's .part file. A recording that cannot start (disk budget, a directory or
// file that cannot be opened) is a "recording" event with its status and reason, and the handler
// then only keeps the shared decoder in step.
func (p recordProc) Start(c Call) (Handler, error) {
	spec := c.Spec()
	r := &recordCall{cfg: p.cfg, dir: p.dir, c: c, chans: len(spec.Legs), legs: make([]recLeg, len(spec.Legs))}
	r.chooseFormat(spec.Legs)
	r.sh = c.Shared().Acquire()
	r.out = Recording{Format: "pcm16", Rate: r.rate}
	switch r.format {
	case wav.FormatMuLaw:
		r.out.Format = "pcmu"
	case wav.FormatALaw:
		r.out.Format = "pcma"
	}
	for _, l := range spec.Legs {
		r.out.Channels = append(r.out.Channels, l.Name)
	}
	if left := p.dir.takeRecovered(); len(left) > 0 {
		for _, rec := range left[:min(len(left), 20)] {
			c.Log().Warn().Str("file", rec.Path).Str("status", rec.Status).Int64("samples", rec.Samples).
				Str("error", rec.Error).Msg("recording left by a crash: " + rec.Status + " at setup")
		}
		if len(left) > 20 {
			c.Log().Warn().Int("more", len(left)-20).Msg("more recordings left by a crash (callrouter_recordings_total{status=\"recovered\"})")
		}
	}
	dir := filepath.Join(p.dir.path, safeName(spec.Tenant))
	name := fmt.Sprintf("%s-e%d.wav", safeName(spec.Call), c.Epoch())
	r.final = filepath.Join(dir, name)
	r.tmp = filepath.Join(dir, "."+name+".part")
	if why := p.dir.overBudget(p.cfg.MaxBytes, p.cfg.MinFree); why != "" {
		r.conclude(RecRefused, "disk_budget", errors.New(why))
		return r, nil
	}
	if err := r.open(dir); err != nil {
		r.conclude(RecFailed, "open", err)
		return r, nil
	}
	r.win = make([]byte, p.cfg.WindowMS*r.rate/1000*r.chans*r.bps)
	r.fillSilence(r.win)
	r.credit = r.maxCredit()
	return r, nil
}

// open creates the .part file, locks it (see lockFile) and writes the header.
func (r *recordCall) open(dir string) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	f, err := os.OpenFile(r.tmp, os.O_CREATE|os.O_WRONLY, 0o640) // truncated once it is ours
	if err != nil {
		return err
	}
	if err := lockFile(f); err != nil {
		f.Close()
		return fmt.Errorf("%s is held by another recording: %w", r.tmp, err)
	}
	hdr := r.header(0)
	r.hdrLen = int64(len(hdr))
	if err := f.Truncate(0); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(hdr); err != nil {
		f.Close()
		os.Remove(r.tmp)
		return err
	}
	r.dir.used.Add(r.hdrLen)
	r.f = f
	return nil
}

// chooseFormat keeps the legs' own encoding when they all share G.711 or L16 at one rate (so
// the file is sample-exact to what ingest published) and otherwise decodes to PCM16.
func (r *recordCall) chooseFormat(legs []session.Leg) {
	same := true
	for _, l := range legs[1:] {
		same = same && l.Codec == legs[0].Codec && l.Rate == legs[0].Rate
	}
	r.format, r.bps, r.codec = wav.FormatPCM, 2, frame.CodecL16
	if same && r.cfg.Format == "auto" {
		switch legs[0].Codec {
		case frame.CodecPCMU:
			r.format, r.bps, r.codec, r.silence, r.rate = wav.FormatMuLaw, 1, frame.CodecPCMU, 0xFF, 8000
		case frame.CodecPCMA:
			r.format, r.bps, r.codec, r.silence, r.rate = wav.FormatALaw, 1, frame.CodecPCMA, 0xD5, 8000
		}
	}
	if r.rate == 0 {
		r.rate = r.cfg.Rate
		for _, l := range legs {
			if r.cfg.Rate == 0 {
				h := frame.Header{Codec: l.Codec, SampleRate: l.Rate}
				r.rate = max(r.rate, NativeRate(&h))
			}
		}
	}
	r.spf = audio.SamplesPerFrame(r.rate)
}

// header returns the WAV header for a data chunk of n bytes (18-byte fmt chunk for G.711, as
// the WAVE spec asks of non-PCM formats).
func (r *recordCall) header(n uint32) []byte {
	fmtLen := 16
	if r.format != wav.FormatPCM {
		fmtLen = 18
	}
	h := make([]byte, 0, 46)
	h = append(h, "RIFF"...)
	h = binary.LittleEndian.AppendUint32(h, uint32(4+8+fmtLen+8)+n)
	h = append(h, "WAVEfmt "...)
	h = binary.LittleEndian.AppendUint32(h, uint32(fmtLen))
	h = binary.LittleEndian.AppendUint16(h, uint16(r.format))
	h = binary.LittleEndian.AppendUint16(h, uint16(r.chans))
	h = binary.LittleEndian.AppendUint32(h, uint32(r.rate))
	h = binary.LittleEndian.AppendUint32(h, uint32(r.rate*r.bps*r.chans))
	h = binary.LittleEndian.AppendUint16(h, uint16(r.bps*r.chans))
	h = binary.LittleEndian.AppendUint16(h, uint16(8*r.bps))
	if fmtLen == 18 {
		h = binary.LittleEndian.AppendUint16(h, 0)
	}
	h = append(h, "data"...)
	return binary.LittleEndian.AppendUint32(h, n)
}

func (r *recordCall) fillSilence(b []byte) {
	if r.silence == 0 {
		clear(b)
		return
	}
	for i := range b {
		b[i] = r.silence
	}
}

// Frame places the frame at (sequence − first sequence) × samples per frame in its channel.
//
// Silence is bounded by real time: the file may grow past the audio it has by at most a credit
// of samples that starts at fillSlack, grows with the wall-clock time between frames (when the
// worker took them off the bus), is spent by every sample the file grows by and never exceeds
// fillSlack. A forward jump the credit does not cover (a far-forward or re-anchored sequence) is
// not written as silence: the leg goes on where it left off, and the jump is a discontinuity
// in the event. Over any stretch, the silence written is at most the wall time elapsed (plus
// 1/64 of it, so a leg that once ran ahead regains its slack) plus fillSlack.
func (r *recordCall) Frame(f *Frame) {
	h := &f.Header
	if int(h.Leg) >= len(r.legs) {
		return
	}
	var pcm []int16
	native := r.format != wav.FormatPCM && h.Codec == r.codec && len(f.Payload) == r.spf
	if !native {
		pcm = r.sh.Media.PCM(f, r.rate)
	} else {
		r.sh.Media.PCM(f, 0) // keep the shared decoder in step for the other processors
	}
	if r.done {
		return
	}
	if !r.haveOrig {
		r.origin, r.haveOrig = h.Seq, true
		r.out.StartSeq = h.Seq
	}
	if h.Seq < r.origin {
		r.out.LateFrames++
		return
	}
	r.earn(f)
	l := &r.legs[h.Leg]
	cause := l.gapCause
	l.gapCause = ""
	pos := r.place(h.Seq, l.shift)
	if l.started && h.Seq == l.lastSeq+1 {
		pos = l.next // continuous: keep a resampler's output contiguous
	}
	if pos-r.end > r.credit {
		pos = r.discontinuity(h, l, pos, cause)
	}
	l.started, l.lastSeq = true, h.Seq
	n := len(pcm)
	if native {
		n = len(f.Payload)
	}
	if pos < r.winStart {
		r.out.LateFrames++
		return
	}
	r.credit = min(r.maxCredit(), max(0, r.credit-max(0, pos+int64(n)-r.end)))
	if err := r.makeRoom(pos + int64(n)); err != nil {
		r.writeFailed(err)
		return
	}
	fb := r.chans * r.bps
	off := int(pos-r.winStart)*fb + int(h.Leg)*r.bps
	switch {
	case native:
		for i, b := range f.Payload {
			r.win[off+i*fb] = b
		}
	case r.format == wav.FormatMuLaw:
		for i, s := range pcm {
			r.win[off+i*fb] = audio.EncodeMuLaw(s)
		}
	case r.format == wav.FormatALaw:
		for i, s := range pcm {
			r.win[off+i*fb] = audio.EncodeALaw(s)
		}
	default:
		for i, s := range pcm {
			binary.LittleEndian.PutUint16(r.win[off+i*fb:], uint16(s))
		}
	}
	l.next = pos + int64(n)
	r.end = max(r.end, l.next)
}

// Gap notes the cause of the jump the next frame on the leg makes (for its discontinuity).
func (r *recordCall) Gap(g Gap) {
	if int(g.Leg) < len(r.legs) {
		r.legs[g.Leg].gapCause = g.Cause
	}
}

// Paused notes a paused frame (a secure pause): it has no audio, and the leg's next frame jumps
// over it, which the timeline fills with silence like any gap the wall time covers.
func (r *recordCall) Paused(h *frame.Header) {
	if int(h.Leg) < len(r.legs) {
		r.legs[h.Leg].gapCause = CausePaused
		r.legs[h.Leg].paused++
	}
}

func (r *recordCall) place(seq uint32, shift int64) int64 {
	return int64(seq-r.origin)*int64(r.spf) - shift
}

func (r *recordCall) maxCredit() int64 { return int64(fillSlack) * int64(r.rate) / int64(time.Second) }

// earn adds the wall time since the latest frame to the credit. The clock is the worker's
// (Received), or the capture time when a frame has none.
func (r *recordCall) earn(f *Frame) {
	now := f.Received
	if now == 0 {
		now = f.Header.Capture
	}
	if now <= r.lastWall {
		return
	}
	if r.lastWall != 0 {
		d := min(now-r.lastWall, int64(24*time.Hour))
		d += d / 64
		r.credit += d * int64(r.rate) / int64(time.Second)
	}
	r.lastWall = now
}

// discontinuity places a frame whose jump the credit does not cover where its leg left off
// (legs that jump together stay aligned; a leg's first frame goes to the end of the file) and
// notes the jump. It returns the frame's position.
func (r *recordCall) discontinuity(h *frame.Header, l *recLeg, pos int64, cause string) int64 {
	np := r.end
	if l.started {
		np = max(l.next, r.winStart)
	}
	skipped := pos - np
	l.shift += skipped
	if cause == "" {
		cause = "sequence_jump"
	}
	ms := func(n int64) int64 { return n * 1000 / int64(r.rate) }
	r.out.DiscontinuityCount++
	r.out.SkippedMS += ms(skipped)
	if len(r.out.Discontinuities) < maxDiscontinuities {
		r.out.Discontinuities = append(r.out.Discontinuities,
			Discontinuity{Leg: h.Leg, Seq: h.Seq, AtMS: ms(np), SkippedMS: ms(skipped), Cause: cause})
	}
	return np
}

// makeRoom writes out the front of the window until position upto fits in it; a leg that has
// not reached the written part keeps the silence already there.
func (r *recordCall) makeRoom(upto int64) error {
	fb := int64(r.chans * r.bps)
	size := int64(len(r.win)) / fb
	if upto <= r.winStart+size {
		return nil
	}
	adv := max(upto-(r.winStart+size), size/2)
	return r.flush(adv)
}

// flush writes n samples per channel from the front of the window (silence past its end). It
// stops with errSizeLimit where the WAV data chunk is full.
func (r *recordCall) flush(n int64) error {
	fb := int64(r.chans * r.bps)
	size := int64(len(r.win)) / fb
	for n > 0 {
		k := min(n, size)
		full := false
		if room := maxDataBytes/fb - r.written; k >= room {
			k, full = room, true
		}
		m, err := r.f.Write(r.win[:k*fb])
		r.written += int64(m) / fb
		r.dir.used.Add(int64(m))
		if err != nil {
			r.broken = true
			return err
		}
		if full {
			return errSizeLimit
		}
		copy(r.win, r.win[k*fb:])
		r.fillSilence(r.win[(size-k)*fb:])
		r.winStart += k
		n -= k
	}
	return nil
}

// writeFailed ends the recording at the last good write: the file keeps what was written.
func (r *recordCall) writeFailed(err error) {
	if errors.Is(err, errSizeLimit) {
		r.conclude(RecPartial, "size_limit", err)
	} else {
		r.conclude(RecPartial, "write", err)
	}
}

// Stop writes the rest and finishes the file.
func (r *recordCall) Stop(string) {
	defer r.sh.Release()
	if r.done {
		return
	}
	if err := r.flush(r.end - r.winStart); err != nil {
		r.writeFailed(err)
		return
	}
	r.conclude(RecComplete, "", nil)
}

// conclude finishes the file (when one is open) and publishes the one "recording" event:
// status complete or partial renames the file to its final name with the samples written; a
// file that cannot be finished stays as .part for the next setup to recover.
func (r *recordCall) conclude(status, reason string, cause error) {
	r.done = true
	var note error // a problem after the rename: the file is in place but its name may not be durable
	if r.f != nil {
		if status == RecPartial && r.written == 0 {
			r.f.Close()
			os.Remove(r.tmp)
			r.dir.used.Add(-r.hdrLen)
			status = RecFailed
		} else if err := r.finish(); err != nil {
			status, reason = RecFailed, "finish"
			cause = errors.Join(cause, fmt.Errorf("%s kept for recovery at the next start: %w", r.tmp, err))
		} else {
			r.out.Path = r.final
			if err := syncDir(filepath.Dir(r.final)); err != nil {
				note = fmt.Errorf("directory sync after the rename: %w", err)
			}
		}
	}
	if cause = errors.Join(cause, note); cause != nil {
		r.out.Error = cause.Error()
	}
	r.out.Status, r.out.Reason = status, reason
	for _, l := range r.legs {
		r.out.PausedMS = max(r.out.PausedMS, l.paused*int64(frame.Duration/time.Millisecond))
	}
	r.out.Samples = r.written
	r.out.DurationMS = r.written * 1000 / int64(r.rate)
	Recordings.WithLabelValues(status).Inc()
	if status != RecComplete || note != nil {
		r.c.Log().Error().Str("status", status).Str("reason", reason).Str("file", r.tmp).Str("error", r.out.Error).
			Int64("samples", r.written).Msg("recording not complete")
	}
	r.c.Emit("recording", r.out)
	r.sh.Put("recording", r.out)
}

// finish fixes the header's sizes, cuts anything past the last whole sample written, syncs and
// renames the file to its final name (conclude then syncs the directory). After a failed write the
// descriptor is replaced by a new one.
func (r *recordCall) finish() error {
	f := r.f
	if r.broken {
		nf, err := os.OpenFile(r.tmp, os.O_RDWR, 0)
		f.Close()
		if err != nil {
			return err
		}
		_ = lockFile(nf)
		f = nf
	}
	data := r.written * int64(r.chans*r.bps)
	err := f.Truncate(r.hdrLen + data)
	if err == nil {
		_, err = f.WriteAt(r.header(uint32(data)), 0)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(r.tmp, r.final)
	}
	return err
}
