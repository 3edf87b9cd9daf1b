package whip

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
)

// Offer errors, each answered with 400 Bad Request.
var (
	// ErrBadOffer means the body is not an SDP session description.
	ErrBadOffer = errors.New("whip: offer is not valid SDP")
	// ErrNoAudio means the offer has no active audio section that sends.
	ErrNoAudio = errors.New("whip: offer has no audio section sending media")
	// ErrNoCodec means the offer's audio section lists none of the accepted codecs.
	ErrNoCodec = errors.New("whip: offer has no accepted audio codec")
)

// codec is one audio codec the endpoint can take.
type codec struct {
	name    string
	frame   frame.Codec
	params  webrtc.RTPCodecParameters
	clock   uint32 // RTP clock rate
	samples uint32 // RTP clock ticks in one 20 ms frame
}

var codecs = []codec{
	{name: "opus", frame: frame.CodecOpus, clock: 48000, samples: 960, params: webrtc.RTPCodecParameters{
		RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2,
			SDPFmtpLine: "minptime=10;useinbandfec=1"}, PayloadType: 111}},
	{name: "pcmu", frame: frame.CodecPCMU, clock: 8000, samples: 160, params: webrtc.RTPCodecParameters{
		RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypePCMU, ClockRate: 8000}, PayloadType: 0}},
	{name: "pcma", frame: frame.CodecPCMA, clock: 8000, samples: 160, params: webrtc.RTPCodecParameters{
		RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypePCMA, ClockRate: 8000}, PayloadType: 8}},
}

func codecByName(name string) (*codec, bool) {
	for i := range codecs {
		if codecs[i].name == name {
			return &codecs[i], true
		}
	}
	return nil, false
}

// staticPT names the RFC 3551 static payload types an offer may use without an rtpmap.
var staticPT = map[string]string{"0": "pcmu", "8": "pcma"}

// chooseCodec parses an offer and returns the first codec of prefer (server order) that the
// offer's first sending audio section lists.
func chooseCodec(offer []byte, prefer []string) (*codec, error) {
	var sd sdp.SessionDescription
	if err := sd.UnmarshalString(string(offer)); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadOffer, err)
	}
	for _, m := range sd.MediaDescriptions {
		if m.MediaName.Media != "audio" || m.MediaName.Port.Value == 0 {
			continue
		}
		if dirOf(m, &sd) == "recvonly" || dirOf(m, &sd) == "inactive" {
			continue
		}
		offered := map[string]bool{}
		for _, f := range m.MediaName.Formats {
			if n, ok := staticPT[f]; ok {
				offered[n] = true
			}
		}
		for _, a := range m.Attributes {
			if a.Key != "rtpmap" {
				continue
			}
			_, enc, ok := strings.Cut(a.Value, " ")
			if !ok {
				continue
			}
			name, rest, _ := strings.Cut(enc, "/")
			rate, _, _ := strings.Cut(rest, "/")
			name = strings.ToLower(name)
			if c, ok := codecByName(name); ok && rate == strconv.Itoa(int(c.clock)) {
				offered[name] = true
			}
		}
		for _, p := range prefer {
			if offered[p] {
				c, _ := codecByName(p)
				return c, nil
			}
		}
		return nil, ErrNoCodec
	}
	return nil, ErrNoAudio
}

// dirOf returns the media section's direction attribute, or the session's, or "sendrecv".
func dirOf(m *sdp.MediaDescription, sd *sdp.SessionDescription) string {
	for _, attrs := range [][]sdp.Attribute{m.Attributes, sd.Attributes} {
		for _, a := range attrs {
			switch a.Key {
			case "sendrecv", "sendonly", "recvonly", "inactive":
				return a.Key
			}
		}
	}
	return "sendrecv"
}
