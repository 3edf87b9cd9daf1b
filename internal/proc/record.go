package proc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

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
	return nil
}

func newRecord(o Options) (Processor, error) {
	c := DefaultRecordConfig()
	if err := o.Only("dir", "format", "rate", "window_ms"); err != nil {
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
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return recordProc{cfg: c}, nil
}

type recordProc struct{ cfg RecordConfig }

// Recording is the body of the "recording" event and the summary's "recording" section.
type Recording struct {
	Path       string   `json:"path,omitempty"`
	Format     string   `json:"format"` // pcmu, pcma or pcm16
	Rate       int      `json:"rate"`
	Channels   []string `json:"channels"` // leg names, in channel order
	Samples    int64    `json:"samples"`  // per channel
	DurationMS int64    `json:"duration_ms"`
	StartSeq   uint32   `json:"start_seq"`             // the sequence number at sample 0
	LateFrames int      `json:"late_frames,omitempty"` // frames that arrived after their place was written
	Error      string   `json:"error,omitempty"`
}

type recLeg struct {
	started bool
	lastSeq uint32
	next    int64 // timeline position after the last sample written
}

type recordCall struct {
	cfg     RecordConfig
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
	out      Recording
	err      error
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

func (p recordProc) Start(c Call) (Handler, error) {
	spec := c.Spec()
	r := &recordCall{cfg: p.cfg, c: c, chans: len(spec.Legs), legs: make([]recLeg, len(spec.Legs))}
	r.chooseFormat(spec.Legs)
	dir := filepath.Join(p.cfg.Dir, safeName(spec.Tenant))
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("record: %w", err)
	}
	name := fmt.Sprintf("%s-e%d.wav", safeName(spec.Call), c.Epoch())
	r.final = filepath.Join(dir, name)
	r.tmp = filepath.Join(dir, "."+name+".part")
	f, err := os.OpenFile(r.tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return nil, fmt.Errorf("record: %w", err)
	}
	r.f = f
	hdr := r.header(0)
	r.hdrLen = int64(len(hdr))
	if _, err := f.Write(hdr); err != nil {
		f.Close()
		os.Remove(r.tmp)
		return nil, fmt.Errorf("record: %w", err)
	}
	r.win = make([]byte, p.cfg.WindowMS*r.rate/1000*r.chans*r.bps)
	r.fillSilence(r.win)
	r.sh = AcquireShared(c)
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
	return r, nil
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
	if r.err != nil {
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
	l := &r.legs[h.Leg]
	pos := int64(h.Seq-r.origin) * int64(r.spf)
	if l.started && h.Seq == l.lastSeq+1 {
		pos = l.next // continuous: keep a resampler's output contiguous
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
	if err := r.makeRoom(pos + int64(n)); err != nil {
		r.fail(err)
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

// flush writes n samples per channel from the front of the window (silence past its end).
func (r *recordCall) flush(n int64) error {
	fb := int64(r.chans * r.bps)
	size := int64(len(r.win)) / fb
	for n > 0 {
		k := min(n, size)
		if _, err := r.f.Write(r.win[:k*fb]); err != nil {
			return err
		}
		copy(r.win, r.win[k*fb:])
		r.fillSilence(r.win[(size-k)*fb:])
		r.winStart += k
		r.written += k
		n -= k
	}
	return nil
}

func (r *recordCall) fail(err error) {
	r.err = err
	r.c.Log().Error().Err(err).Str("file", r.tmp).Msg("recording failed")
}

// Stop writes the rest, fixes the header's sizes, syncs and renames the file to its final name.
func (r *recordCall) Stop(string) {
	defer ReleaseShared(r.c)
	if r.err == nil {
		r.err = r.finish()
	}
	if r.err != nil {
		r.f.Close()
		os.Remove(r.tmp)
		r.out.Error = r.err.Error()
	} else {
		r.out.Path = r.final
	}
	r.out.Samples = r.written
	r.out.DurationMS = r.written * 1000 / int64(r.rate)
	r.c.Emit("recording", r.out)
	r.sh.Put("recording", r.out)
}

func (r *recordCall) finish() error {
	if err := r.flush(r.end - r.winStart); err != nil {
		return err
	}
	data := r.written * int64(r.chans*r.bps)
	if data > 1<<32-64 {
		return errors.New("record: recording exceeds 4 GiB")
	}
	if _, err := r.f.WriteAt(r.header(uint32(data)), 0); err != nil {
		return err
	}
	if err := r.f.Sync(); err != nil {
		return err
	}
	if err := r.f.Close(); err != nil {
		return err
	}
	return os.Rename(r.tmp, r.final)
}
