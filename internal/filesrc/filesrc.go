// Package filesrc cuts WAV files into recordings of 20 ms payloads: one channel per leg, in the
// file's own encoding (16-bit PCM as L16, μ-law as PCMU, A-law as PCMA). It reads only; package
// player plays a recording into an ingest node, and the load tester sends it as a client.
package filesrc

import (
	"fmt"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/wav"
)

// DefaultLegNames name the legs of a mono (one leg) or stereo (two legs) file.
var DefaultLegNames = []string{"caller", "agent", "leg2", "leg3", "leg4", "leg5", "leg6", "leg7"}

// Recording is a WAV file cut into 20 ms payloads per leg.
type Recording struct {
	Codec  frame.Codec
	Rate   int
	Frames [][][]byte // [leg][frame]payload
}

// Load reads and cuts a WAV file. legs limits the number of legs (0 keeps every channel).
func Load(path string, legs int) (*Recording, error) {
	a, err := wav.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return FromAudio(a, legs)
}

// FromAudio cuts decoded audio into 20 ms payloads.
func FromAudio(a *wav.Audio, legs int) (*Recording, error) {
	r := &Recording{Rate: a.Rate}
	switch a.Format {
	case wav.FormatPCM:
		r.Codec = frame.CodecL16
	case wav.FormatMuLaw:
		r.Codec = frame.CodecPCMU
	case wav.FormatALaw:
		r.Codec = frame.CodecPCMA
	}
	if a.Rate%50 != 0 {
		return nil, fmt.Errorf("filesrc: sample rate %d is not a multiple of 50 Hz", a.Rate)
	}
	size := a.Rate / 50 * a.BytesPerSample()
	chans := a.Channels
	if legs > 0 && legs < len(chans) {
		chans = chans[:legs]
	}
	for _, ch := range chans {
		var fr [][]byte
		for off := 0; off < len(ch); off += size {
			p := make([]byte, size) // the last frame is padded with silence
			if r.Codec == frame.CodecPCMU {
				for i := range p {
					p[i] = 0xFF
				}
			} else if r.Codec == frame.CodecPCMA {
				for i := range p {
					p[i] = 0xD5
				}
			}
			copy(p, ch[off:min(off+size, len(ch))])
			fr = append(fr, p)
		}
		r.Frames = append(r.Frames, fr)
	}
	return r, nil
}

// Len returns the number of frames per leg.
func (r *Recording) Len() int {
	if len(r.Frames) == 0 {
		return 0
	}
	return len(r.Frames[0])
}

// Spec returns a call spec for this recording.
func (r *Recording) Spec(tenant, call string, meta map[string]string) session.Spec {
	s := session.Spec{ID: session.ID{Tenant: tenant, Call: call}, Meta: meta}
	for i := range r.Frames {
		s.Legs = append(s.Legs, session.Leg{Index: uint8(i), Name: DefaultLegNames[i], Codec: r.Codec, Rate: uint32(r.Rate)})
	}
	return s
}
