package loadtest

import (
	"strings"
	"testing"
)

func TestParseSIPAndAnswer(t *testing.T) {
	m, ok := parseSIP([]byte("SIP/2.0 503 Service Unavailable\r\ni: abc\r\nCSeq: 1 INVITE\r\nRetry-After: 7\r\nt: <sip:x@y>;tag=zz\r\n\r\n"))
	if !ok || m.status() != 503 || m.header("call-id") != "abc" || m.header("retry-after") != "7" || m.header("to") != "<sip:x@y>;tag=zz" {
		t.Fatalf("parsed %+v", m)
	}
	addrs, err := answerPorts("v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 20000 RTP/AVP 0\r\nm=audio 20002 RTP/AVP 0\r\nc=IN IP4 127.0.0.2\r\n")
	if err != nil || len(addrs) != 2 || addrs[0].String() != "127.0.0.1:20000" || addrs[1].String() != "127.0.0.2:20002" {
		t.Errorf("answer ports %v, %v", addrs, err)
	}
	for _, bad := range []string{"", "v=0\r\nm=audio 1 RTP/AVP 0\r\n", "c=IN IP4 1.2.3.4\r\nm=audio 0 RTP/AVP 0\r\n"} {
		if _, err := answerPorts(bad); err == nil {
			t.Errorf("answer %q: no error", bad)
		}
	}
}

func TestULaw(t *testing.T) {
	for _, c := range []struct {
		in   int16
		want byte
	}{{0, 0xFF}, {-1, 0x7F}, {32767, 0x80}, {-32768, 0x00}, {1000, 0xCE}} {
		if got := linearToULaw(c.in); got != c.want {
			t.Errorf("μ-law(%d) = %#x, want %#x", c.in, got, c.want)
		}
	}
}

func FuzzSIPResponse(f *testing.F) {
	f.Add("SIP/2.0 200 OK\r\nCall-ID: a\r\nCSeq: 1 INVITE\r\n\r\nv=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n")
	f.Add("BYE sip:x SIP/2.0\r\nv: SIP/2.0/UDP 1.2.3.4\r\n i: x\r\n\r\n")
	f.Fuzz(func(t *testing.T, s string) {
		m, ok := parseSIP([]byte(s))
		if !ok {
			return
		}
		_ = m.status()
		_ = m.header("call-id")
		addrs, err := answerPorts(m.body)
		if err == nil && (len(addrs) == 0 || strings.Contains(s, "m=audio") == false) {
			t.Fatalf("answer without media: %v", addrs)
		}
	})
}
