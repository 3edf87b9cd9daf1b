package proc

import (
	"github.com/callrouter/callrouter/internal/audio"
	"github.com/callrouter/callrouter/internal/frame"
)

// Media decodes a call's frames to 16-bit PCM once per frame, however many processors ask, and
// converts them to the rates processors ask for. One decoder and one resampler per leg and rate
// carry codec and filter state from frame to frame, so every processor that uses Media must ask
// for every frame it is given (the analysis processors all do). Frames that carry no audio
// (telephone events, gap-filled frames with an empty payload) and frames that do not decode
// come back as 20 ms of silence.
type Media struct {
	legs []mediaLeg
}

type mediaLeg struct {
	codec  frame.Codec
	rate   int // the decoder's rate
	dec    audio.Decoder
	seq    uint32
	have   bool // pcm holds frame seq
	pcm    []int16
	conv   []mediaConv
	errors int // frames that did not decode
}

type mediaConv struct {
	to  int
	r   *audio.Resampler
	seq uint32
	ok  bool
	out []int16
}

func newMedia(legs int) *Media {
	return &Media{legs: make([]mediaLeg, legs)}
}

// OpusRate is the rate Media decodes Opus to: wideband, all that speech analysis and call
// recording need, and about 30% cheaper than decoding to 48 kHz (docs/processors.md).
const OpusRate = 16000

// NativeRate returns the rate at which PCM of frames with this header comes out of PCM(f, 0).
func NativeRate(h *frame.Header) int {
	switch h.Codec {
	case frame.CodecPCMU, frame.CodecPCMA:
		return 8000
	case frame.CodecOpus:
		return OpusRate
	case frame.CodecG722:
		return 16000 // whatever the header says: RTP's G.722 clock is 8000
	}
	if h.SampleRate == 0 {
		return 8000
	}
	return int(h.SampleRate)
}

// PCM returns frame f decoded to 16-bit PCM at rate (0 for the codec's native rate). The slice
// is owned by Media and valid until the next frame of the same leg.
func (m *Media) PCM(f *Frame, rate int) []int16 {
	h := &f.Header
	if int(h.Leg) >= len(m.legs) {
		return nil
	}
	l := &m.legs[h.Leg]
	native := NativeRate(h)
	if !l.have || l.seq != h.Seq {
		l.decode(f, native)
	}
	if rate == 0 || rate == native {
		return l.pcm
	}
	for i := range l.conv {
		c := &l.conv[i]
		if c.to != rate {
			continue
		}
		if c.r.From() != native { // the leg's codec changed rate mid-call
			c.r, _ = audio.NewResampler(native, rate)
			c.ok = false
		}
		if !c.ok || c.seq != h.Seq {
			c.out = c.r.Resample(l.pcm, c.out[:0])
			c.seq, c.ok = h.Seq, true
		}
		return c.out
	}
	r, err := audio.NewResampler(native, rate)
	if err != nil {
		return nil
	}
	l.conv = append(l.conv, mediaConv{to: rate, r: r, seq: h.Seq, ok: true, out: r.Resample(l.pcm, nil)})
	return l.conv[len(l.conv)-1].out
}

// DecodeErrors returns the number of frames of a leg that did not decode.
func (m *Media) DecodeErrors(leg uint8) int {
	if int(leg) >= len(m.legs) {
		return 0
	}
	return m.legs[leg].errors
}

func (l *mediaLeg) decode(f *Frame, native int) {
	h := &f.Header
	l.seq, l.have = h.Seq, true
	n := audio.SamplesPerFrame(native)
	if h.Codec == frame.CodecTelephoneEvent || len(f.Payload) == 0 { // events, empty gap fills
		l.pcm = audio.AppendSilence(l.pcm[:0], n)
		return
	}
	if l.dec == nil || l.codec != h.Codec || l.rate != native {
		d, err := audio.NewDecoder(h.Codec, native)
		if err != nil {
			l.dec = nil
			l.errors++
			l.pcm = audio.AppendSilence(l.pcm[:0], n)
			return
		}
		l.dec, l.codec, l.rate = d, h.Codec, native
	}
	var err error
	l.pcm, err = l.dec.Decode(f.Payload, l.pcm[:0])
	if err != nil || len(l.pcm) == 0 {
		l.errors++
		l.pcm = audio.AppendSilence(l.pcm[:0], n)
	}
}

// frameMS returns the media time of the start of a frame in milliseconds since the leg's first
// frame: every frame is 20 ms and sequence numbers are gap-free from 0.
func frameMS(seq uint32) int64 { return int64(seq) * 20 }
