package sip

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/guard"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// FuzzSIPHandler sends each input as a datagram to a running SIP server (the whole handler
// layer: guard, sipgo, precheck, the method handlers, placement), then an OPTIONS: the server
// must still answer it 200, no handler or RTP loop may have panicked (a recovered panic is a bug
// too), and the responses metric keeps its bounded label set. Seeds: the RFC 4475 torture
// messages and an INVITE, re-INVITE, BYE, UPDATE and INFO. The server accepts G.722 only, which
// no seed offers: an INVITE it answered 200 and that is never ACKed would hold Run's shutdown for
// timer H (32 s); the answered path is covered by the call tests.
func FuzzSIPHandler(f *testing.F) {
	files, _ := filepath.Glob("testdata/rfc4475/*.dat")
	for _, p := range files {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	sdp := "v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 18 101\r\na=rtpmap:18 G729/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
	for _, m := range []struct{ method, to, hdrs, body string }{
		{"INVITE", "", "Content-Type: application/sdp\r\n", sdp},
		{"INVITE", ";tag=x", "Content-Type: application/sdp\r\n", sdp},
		{"BYE", ";tag=x", "", ""},
		{"UPDATE", ";tag=x", "Session-Expires: 120\r\n", ""},
		{"INFO", ";tag=x", "Content-Type: application/dtmf-relay\r\n", "Signal=5\r\nDuration=160\r\n"},
	} {
		f.Add([]byte(fmt.Sprintf("%s sip:svc@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-seed\r\n"+
			"From: <sip:a@127.0.0.1>;tag=f1\r\nTo: <sip:svc@127.0.0.1>%s\r\nCall-ID: seed@127.0.0.1\r\nCSeq: 1 %s\r\n"+
			"Contact: <sip:a@127.0.0.1:5062>\r\nMax-Forwards: 70\r\n%sContent-Length: %d\r\n\r\n%s", m.method, m.to, m.method, m.hdrs, len(m.body), m.body)))
	}
	e := startEnv(f, 1, func(c *Config) {
		c.RTPTimeout, c.MaxCalls, c.InviteRate, c.Codecs = time.Second, 20, 0, []string{"g722"}
	})
	panics := func() float64 {
		return testutil.ToFloat64(guard.Panics.WithLabelValues("sip_handler")) + testutil.ToFloat64(guard.Panics.WithLabelValues("sip_rtp"))
	}
	p0 := panics()
	probe := 0
	f.Fuzz(func(t *testing.T, msg []byte) {
		u := newUAC(t, e.addr)
		if _, err := u.conn.WriteToUDP(msg, u.dst); err != nil {
			t.Skip(err) // e.g. larger than a datagram
		}
		probe++
		if res := u.request("OPTIONS", fmt.Sprintf("probe-%d", probe), "", 1, "", "", ""); codeOf(res) != "200" {
			t.Fatalf("OPTIONS after the input: %.40q", res)
		}
		if p := panics(); p != p0 {
			t.Fatalf("the input made a handler or RTP loop panic (%v recovered)", p-p0)
		}
		if n, _ := seriesOf(t, e.reg, "callrouter_sip_responses_total"); n > len(knownMethods)*40 {
			t.Fatalf("%d response series", n)
		}
	})
}
