package whip

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/pion/sdp/v3"
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
	rtpmap  string // encoding in the answer's a=rtpmap (after the payload type)
	fmtp    string // the answer's a=fmtp parameters, if any
	clock   uint32 // RTP clock rate
	samples uint32 // RTP clock ticks in one 20 ms frame
}

var codecs = []codec{
	{name: "opus", frame: frame.CodecOpus, clock: 48000, samples: 960, rtpmap: "opus/48000/2", fmtp: "minptime=10;useinbandfec=1"},
	{name: "pcmu", frame: frame.CodecPCMU, clock: 8000, samples: 160, rtpmap: "PCMU/8000"},
	{name: "pcma", frame: frame.CodecPCMA, clock: 8000, samples: 160, rtpmap: "PCMA/8000"},
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

// offer is what the answer needs from an offer: the codec chosen and its payload type in the
// offer, the ICE credentials and DTLS fingerprint of the peer, and every media section (the
// answer has one for each, in order; all but the chosen audio one rejected).
type offer struct {
	codec    *codec
	pt       uint8 // the offer's payload type for codec
	audio    int   // index in sections of the section answered
	sections []offerSection
	bundle   bool // the offer groups the answered section with BUNDLE
	ufrag    string
	pwd      string
	fpAlg    string // fingerprint hash, e.g. "sha-256"
	fp       string // colon-separated hex
	setup    string // actpass, active or passive ("" means actpass)
}

type offerSection struct{ media, proto, mid, format string }

// parseOffer parses an offer and picks the first codec of prefer (server order) that the offer's
// first sending audio section lists; then it takes that section's (or the session's) ICE
// credentials and DTLS fingerprint.
func parseOffer(b []byte, prefer []string) (*offer, error) {
	var sd sdp.SessionDescription
	if err := sd.UnmarshalString(string(b)); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadOffer, err)
	}
	o := &offer{audio: -1}
	var audio *sdp.MediaDescription
	for i, m := range sd.MediaDescriptions {
		sec := offerSection{media: m.MediaName.Media, proto: strings.Join(m.MediaName.Protos, "/")}
		sec.mid, _ = m.Attribute("mid")
		if len(m.MediaName.Formats) > 0 {
			sec.format = m.MediaName.Formats[0]
		}
		o.sections = append(o.sections, sec)
		if audio != nil || m.MediaName.Media != "audio" || m.MediaName.Port.Value == 0 {
			continue
		}
		if d := dirOf(m, &sd); d == "recvonly" || d == "inactive" {
			continue
		}
		audio, o.audio = m, i
	}
	if audio == nil {
		return nil, ErrNoAudio
	}
	var err error
	if o.codec, o.pt, err = chooseCodec(audio, prefer); err != nil {
		return nil, err
	}
	attr := func(key string) string {
		if v, ok := audio.Attribute(key); ok {
			return v
		}
		v, _ := sd.Attribute(key)
		return v
	}
	o.ufrag, o.pwd, o.setup = attr("ice-ufrag"), attr("ice-pwd"), attr("setup")
	o.fpAlg, o.fp, _ = strings.Cut(attr("fingerprint"), " ")
	switch {
	case o.ufrag == "" || o.pwd == "" || len(o.ufrag) > 256 || len(o.pwd) > 256:
		return nil, fmt.Errorf("%w: no ICE credentials (ice-ufrag, ice-pwd)", ErrBadOffer)
	case o.fp == "":
		return nil, fmt.Errorf("%w: no DTLS fingerprint", ErrBadOffer)
	case o.setup == "passive":
		return nil, fmt.Errorf("%w: a=setup:passive (the endpoint is the DTLS server; offer actpass)", ErrBadOffer)
	}
	if g, ok := sd.Attribute("group"); ok {
		mids := strings.Fields(g)
		o.bundle = len(mids) > 1 && mids[0] == "BUNDLE" && slices.Contains(mids[1:], o.sections[o.audio].mid)
	}
	return o, nil
}

// chooseCodec returns the first codec of prefer that the audio section lists, and its payload
// type there.
func chooseCodec(m *sdp.MediaDescription, prefer []string) (*codec, uint8, error) {
	offered := map[string]uint8{}
	for _, f := range m.MediaName.Formats {
		if n, ok := staticPT[f]; ok {
			pt, _ := strconv.Atoi(f)
			offered[n] = uint8(pt)
		}
	}
	for _, a := range m.Attributes {
		if a.Key != "rtpmap" {
			continue
		}
		ptStr, enc, ok := strings.Cut(a.Value, " ")
		pt, err := strconv.ParseUint(ptStr, 10, 7)
		if !ok || err != nil {
			continue
		}
		name, rest, _ := strings.Cut(enc, "/")
		rate, _, _ := strings.Cut(rest, "/")
		name = strings.ToLower(name)
		if c, ok := codecByName(name); ok && rate == strconv.Itoa(int(c.clock)) {
			if _, seen := offered[name]; !seen {
				offered[name] = uint8(pt)
			}
		}
	}
	for _, p := range prefer {
		if pt, ok := offered[p]; ok {
			c, _ := codecByName(p)
			return c, pt, nil
		}
	}
	return nil, 0, ErrNoCodec
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
