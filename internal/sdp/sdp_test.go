package sdp

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

const sippOffer = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n" +
	"m=audio 6000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-11,16\r\n"

func TestParseSIPpOffer(t *testing.T) {
	s, err := Parse([]byte(sippOffer))
	if err != nil {
		t.Fatal(err)
	}
	want := []Media{{Type: "audio", Port: 6000, Proto: "RTP/AVP", Conn: netip.MustParseAddr("127.0.0.1"), Direction: SendRecv,
		Formats: []Format{{PT: 8, Encoding: "PCMA", Clock: 8000, Channels: 1}, {PT: 101, Encoding: "telephone-event", Clock: 8000, Channels: 1, Fmtp: "0-11,16"}}}}
	if d := cmp.Diff(want, s.Media, cmpopts.EquateComparable(netip.Addr{})); d != "" {
		t.Error(d)
	}
}

func TestParseStaticAndSections(t *testing.T) {
	in := "v=0\nc=IN IP4 10.0.0.1\nm=audio 4000 RTP/AVP 0 9\na=sendonly\na=label:7\na=ptime:30\nm=audio 4002 RTP/AVP 18\nc=IN IP6 ::1\nm=video 0 RTP/AVP 31\n"
	s, err := Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Media) != 3 || s.Media[0].Formats[1].Encoding != "G722" || s.Media[0].Direction != SendOnly || s.Media[0].Label != "7" ||
		s.Media[0].Ptime != 30 || s.Media[1].Conn.String() != "::1" || s.Media[0].Conn.String() != "10.0.0.1" {
		t.Errorf("%+v", s.Media)
	}
}

func TestParseErrors(t *testing.T) {
	for _, in := range []string{"", "x", "v=1\r\n", "v=0\r\nc=IN IP4 nothost\r\n", "v=0\r\nm=audio x RTP/AVP 0\r\n",
		"v=0\r\nm=audio 1 RTP/AVP 300\r\n", "v=0\r\nm=audio\r\n", strings.Repeat("v=0\r\n", 20000)} {
		if _, err := Parse([]byte(in)); err == nil {
			t.Errorf("Parse(%.30q) succeeded", in)
		}
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	b := Marshal("42", 1, netip.MustParseAddr("127.0.0.1"), []Answer{
		{Port: 20000, Formats: []Format{{PT: 8, Encoding: "PCMA", Clock: 8000}, {PT: 101, Encoding: "telephone-event", Clock: 8000, Fmtp: "0-16"}},
			Direction: RecvOnly, Label: "1", Proto: "RTP/SAVP", Crypto: "1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"},
		{Port: 0, Formats: []Format{{PT: 31}}, Type: "video"},
	})
	s, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Media) != 2 || s.Media[0].Port != 20000 || s.Media[0].Direction != RecvOnly || s.Media[0].Label != "1" ||
		s.Media[0].Formats[1].Fmtp != "0-16" || s.Media[1].Port != 0 || s.Media[1].Type != "video" || s.Media[0].Proto != "RTP/SAVP" ||
		len(s.Media[0].Crypto) != 1 || s.Media[0].Crypto[0] != "1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz" {
		t.Errorf("round trip: %s\n%+v", b, s.Media)
	}
}

// FuzzParse checks that Parse never panics and that an answer built from any accepted offer
// parses again.
func FuzzParse(f *testing.F) {
	f.Add([]byte(sippOffer))
	f.Add([]byte("v=0\r\nc=IN IP6 ::1\r\nm=audio 1 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000/1\r\na=label:x\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Parse(b)
		if err != nil {
			return
		}
		var as []Answer
		for _, m := range s.Media {
			as = append(as, Answer{Port: m.Port, Formats: m.Formats, Direction: m.Direction, Ptime: m.Ptime})
		}
		addr := s.Conn
		if !addr.IsValid() {
			addr = netip.MustParseAddr("127.0.0.1")
		}
		_ = Marshal("1", 1, addr, as)
	})
}
