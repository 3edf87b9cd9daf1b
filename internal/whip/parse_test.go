package whip

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

const offerHead = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef012345\r\n" +
	"a=fingerprint:sha-256 AB:CD\r\n"

func TestParseOffer(t *testing.T) {
	all := []string{"opus", "pcmu", "pcma"}
	for _, tc := range []struct {
		name   string
		offer  string
		prefer []string
		want   string
		err    error
	}{
		{"opus first", offerHead + "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8\r\na=rtpmap:111 opus/48000/2\r\na=sendonly\r\n", all, "opus", nil},
		{"server prefers pcmu", offerHead + "m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n", []string{"pcmu", "opus"}, "pcmu", nil},
		{"static pcma", offerHead + "m=audio 9 UDP/TLS/RTP/SAVPF 8\r\n", all, "pcma", nil},
		{"opus at wrong rate", offerHead + "m=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 opus/16000\r\n", all, "", ErrNoCodec},
		{"video only", offerHead + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n", all, "", ErrNoAudio},
		{"audio rejected", offerHead + "m=audio 0 UDP/TLS/RTP/SAVPF 0\r\n", all, "", ErrNoAudio},
		{"audio recvonly", offerHead + "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=recvonly\r\n", all, "", ErrNoAudio},
		{"no codec", offerHead + "m=audio 9 UDP/TLS/RTP/SAVPF 9\r\na=rtpmap:9 G722/8000\r\n", all, "", ErrNoCodec},
		{"garbage", "hello, I am not SDP", all, "", ErrBadOffer},
		{"empty", "", all, "", ErrNoAudio},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseOffer([]byte(tc.offer), tc.prefer)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil || o.codec.name != tc.want {
				t.Fatalf("got %v %v, want %s", o, err, tc.want)
			}
		})
	}
}

func FuzzParseOffer(f *testing.F) {
	f.Add([]byte(offerHead + "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8\r\na=rtpmap:111 opus/48000/2\r\n"))
	f.Add([]byte("v=0\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := parseOffer(b, []string{"opus", "pcmu", "pcma"})
		if (o == nil) == (err == nil) || (o != nil && (o.codec == nil || o.ufrag == "" || o.fp == "")) {
			t.Fatalf("offer %+v and error %v", o, err)
		}
	})
}

func TestParseOpus(t *testing.T) {
	var fr [maxOpusFrames][]byte
	for _, tc := range []struct {
		name   string
		p      []byte
		n, dur int
		bad    bool
	}{
		{"code 0 silk 20ms", []byte{1 << 3, 1, 2}, 1, 960, false},
		{"code 0 celt 10ms", []byte{30 << 3, 1}, 1, 480, false},
		{"code 1 odd", []byte{0xF8 | 1, 1, 2, 3}, 0, 0, true},
		{"code 2", []byte{0xF8 | 2, 1, 9, 8, 8}, 2, 960, false},
		{"code 2 short", []byte{0xF8 | 2, 5, 9}, 0, 0, true},
		{"code 3 cbr", []byte{0xF8 | 3, 3, 1, 2, 3}, 3, 960, false},
		{"code 3 vbr padded", []byte{0xF8 | 3, 0x80 | 0x40 | 2, 1, 1, 7, 8, 0}, 2, 960, false},
		{"code 3 too long", []byte{0xF8 | 3, 7}, 0, 0, true},
		{"empty", nil, 0, 0, true},
	} {
		n, dur, err := parseOpus(tc.p, &fr)
		if (err != nil) != tc.bad || n != tc.n || (err == nil && dur != tc.dur) {
			t.Errorf("%s: %d frames of %d, %v", tc.name, n, dur, err)
		}
	}
}

func FuzzParseOpus(f *testing.F) {
	f.Add([]byte{0xF8 | 3, 0x80 | 0x40 | 2, 1, 1, 7, 8, 0})
	f.Fuzz(func(t *testing.T, p []byte) {
		var fr [maxOpusFrames][]byte
		n, _, err := parseOpus(p, &fr)
		if err != nil {
			return
		}
		total := 0
		for _, x := range fr[:n] {
			total += len(x)
		}
		if n < 1 || total > len(p) {
			t.Fatalf("%d frames of %d bytes from %d", n, total, len(p))
		}
	})
}

func TestTokens(t *testing.T) {
	m, err := ParseTokens(strings.NewReader("# tenants\nacme  s3cret-acme-token\n\nglobex tok-globex-123\n"))
	if err != nil || len(m) != 2 || m["s3cret-acme-token"] != "acme" {
		t.Fatalf("%v %v", m, err)
	}
	for _, bad := range []string{"acme\n", "acme short\n", "a.b long-enough-token\n", "acme tok-aaaaaaa\nbeta tok-aaaaaaa\n"} {
		if _, err := ParseTokens(strings.NewReader(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	a := newAuthenticator(m, "")
	for _, tc := range []struct {
		h, tenant string
		err       error
	}{
		{"Bearer s3cret-acme-token", "acme", nil},
		{"bearer tok-globex-123", "globex", nil},
		{"Bearer wrong-token-here", "", ErrBadToken},
		{"Basic abc", "", ErrNoToken},
		{"", "", ErrNoToken},
	} {
		got, err := a.tenant(tc.h)
		if got != tc.tenant || !errors.Is(err, tc.err) && err != tc.err {
			t.Errorf("%q: %q %v", tc.h, got, err)
		}
	}
	if got, err := newAuthenticator(m, "demo").tenant(""); got != "demo" || err != nil {
		t.Errorf("open tenant: %q %v", got, err)
	}
}

func FuzzParseTokens(f *testing.F) {
	f.Add("acme s3cret-acme-token\n# c\n")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseTokens(strings.NewReader(s))
		if err != nil {
			return
		}
		cfg := DefaultConfig()
		cfg.Tokens = m
		if err := cfg.Validate(); err != nil {
			t.Fatalf("parsed tokens do not validate: %v", err)
		}
	})
}

func TestSessionBounds(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxSessions, cfg.MaxSessionsPerTenant = 3, 2
	s, err := New(cfg, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	take := func(tenant string) bool { ok, _ := s.acquire(tenant); return ok }
	got := []bool{take("a"), take("a"), take("a"), take("b"), take("c")}
	if want := []bool{true, true, false, true, false}; !slices.Equal(got, want) {
		t.Fatalf("acquire: %v, want %v", got, want)
	}
	s.releaseSlot("a")
	if !take("c") || s.Sessions() != 3 {
		t.Fatalf("after a release: %d sessions", s.Sessions())
	}
	s.releaseSlot("c")
	s.live.Drain(0)
	if ok, why := s.acquire("c"); ok || !strings.Contains(why, "draining") {
		t.Fatalf("acquire while draining: %v %q", ok, why)
	}
}

func TestConfigValidate(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.ReadCoalesce = 0 // read each packet as it comes
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.Path, cfg.UDPAddr, cfg.PublicIPs, cfg.Codecs = "whip/", "nope", []string{"not-an-ip"}, []string{"g729"}
	cfg.Tokens = map[string]string{"short": "a.b"}
	cfg.MaxSessions, cfg.MaxBody, cfg.ReorderWindow, cfg.MaxFill = 0, 10, 2*time.Second, 11*time.Second
	cfg.ICEKeepalive, cfg.ICEFailed = 6*time.Second, 10*time.Second
	cfg.ReadCoalesce = 20 * time.Millisecond
	err := cfg.Validate()
	for _, want := range []string{"path", "udp address", "public ip", "codec", "token", "tenant", "max sessions", "max body", "reorder window", "max fill", "-whip-ice-keepalive 6s must be at most half of -whip-ice-failed 10s", "-whip-read-coalesce 20ms must be 0 to 10ms"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("no %q in %v", want, err)
		}
	}
}
