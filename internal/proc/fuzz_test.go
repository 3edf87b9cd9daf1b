package proc

import (
	"testing"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/session"
)

// FuzzFrames feeds the analysis processors frames of any codec and payload, in any sequence
// order: telephone-event records, corrupt Opus, odd L16 lengths, codec changes mid-call. None
// may panic, and every event must marshal.
func FuzzFrames(f *testing.F) {
	f.Add([]byte{6, 0, 1, 0x8a, 100, 0, 0, 0, 0, 0}, uint8(2))
	f.Add([]byte{4, 1, 0xfc, 0xff, 0xfe}, uint8(1))
	f.Add([]byte{3, 0, 1, 2, 3}, uint8(1))
	f.Add([]byte{1, 9, 0xff, 0x7f, 0x00}, uint8(3))
	f.Fuzz(func(t *testing.T, data []byte, frames uint8) {
		if len(data) < 2 {
			return
		}
		c := &fakeCall{spec: session.Spec{ID: session.ID{Tenant: "acme", Call: "fuzz"},
			Legs: []session.Leg{{Index: 0, Name: "caller", Codec: frame.CodecPCMU, Rate: 8000}, {Index: 1, Name: "agent", Codec: frame.CodecL16, Rate: 16000}}}}
		hs := start(t, c, []string{"speech", "dtmf", "levels", "record", "summary"}, recordOpts(t.TempDir()))
		codec := frame.Codec(data[0] % 7)
		seq := uint32(0)
		for i := range int(frames%8) + 1 {
			seq += uint32(data[1]%3) + 1
			h := frame.Header{Codec: codec, Leg: uint8(i % 2), SampleRate: []uint32{8000, 16000, 48000}[i%3], Seq: seq}
			fr := Frame{Header: h, Payload: data[2:]}
			for _, hd := range hs {
				hd.Frame(&fr)
			}
		}
		for _, hd := range hs {
			hd.Stop(StopEnd)
		}
	})
}
