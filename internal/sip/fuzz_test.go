package sip

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/timeline"
	"github.com/emiago/sipgo/sip"
	"github.com/pion/rtp"
	"github.com/prometheus/client_golang/prometheus"
)

// FuzzSIPDatagram runs what callrouter does to every SIP datagram before sipgo sees it: parse,
// the RFC 2543 branch rewrite of parseable requests (which must stay parseable), and the
// stateless error response of unparseable ones. Seeds: the RFC 4475 torture messages.
func FuzzSIPDatagram(f *testing.F) {
	files, _ := filepath.Glob("testdata/rfc4475/*.dat")
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err == nil {
			f.Add(b)
		}
	}
	src := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5062}
	parser := sip.NewParser()
	f.Fuzz(func(t *testing.T, msg []byte) {
		buf := make([]byte, len(msg)+256)
		n := copy(buf, msg)
		m, err := parser.ParseSIP(buf[:n])
		if err != nil {
			res, dst := malformedResponse(msg, src)
			if res != nil && (dst == nil || !bytes.HasPrefix(res, []byte("SIP/2.0 "))) {
				t.Fatalf("bad error response %q to %v", res, dst)
			}
			return
		}
		req, ok := m.(*sip.Request)
		if !ok {
			return
		}
		n2 := rfc2543Branch(req, buf, n)
		if n2 == n {
			return
		}
		m2, err := sip.NewParser().ParseSIP(buf[:n2])
		if err != nil {
			t.Fatalf("rewritten request no longer parses: %v\n%q", err, buf[:n2])
		}
		if br, _ := m2.(*sip.Request).Via().Params.Get("branch"); !strings.HasPrefix(br, sip.RFC3261BranchMagicCookie) {
			t.Fatalf("rewritten request has branch %q", br)
		}
	})
}

// FuzzBody fuzzes the INVITE body parsers: multipart splitting and rs-metadata XML.
func FuzzBody(f *testing.F) {
	sc, _ := os.ReadFile("testdata/sipp/siprec.xml")
	if i := bytes.Index(sc, []byte("--foobar")); i > 0 {
		j := bytes.Index(sc[i:], []byte("--foobar--"))
		if j > 0 {
			body := bytes.ReplaceAll(sc[i:i+j+10], []byte("\n      "), []byte("\r\n"))
			f.Add("multipart/mixed;boundary=foobar", body)
		}
	}
	f.Add("application/sdp", []byte("v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n"))
	f.Add("multipart/mixed", []byte("--x\r\n\r\n--x--"))
	f.Fuzz(func(t *testing.T, ct string, b []byte) {
		body, err := parseBody(ct, b)
		if err != nil {
			return
		}
		if body.metadata != nil {
			if r, err := parseMetadata(body.metadata); err == nil {
				r.senderOfLabel("1")
				for _, p := range r.Participants {
					p.identity()
				}
				r.merge(r)
			}
		}
	})
}

// FuzzRTP feeds arbitrary datagrams through RTP parsing, the cutter and the DTMF detector: every
// frame out is exactly 20 ms and one packet makes at most timeline.MaxFramesPerPacket frames,
// whatever comes in.
func FuzzRTP(f *testing.F) {
	for _, p := range [][]byte{
		append([]byte{0x80, 8, 0, 1, 0, 0, 0, 240, 0, 0, 0, 1}, make([]byte, 240)...),
		{0x80, 101, 0, 2, 0, 0, 0, 240, 0, 0, 0, 1, 1, 0x8a, 8, 0xc0},
		{0x90, 0, 0, 3, 0, 0, 1, 0, 0, 0, 0, 1, 0xbe, 0xde, 0, 1, 1, 2, 3, 4, 9, 9},
	} {
		f.Add(p, p, p, uint8(20))
		f.Add(p, p, p, uint8(0x80|20))
	}
	// The attack: b waits for the packet between a and it, c jumps 2^30 ticks.
	f.Add(append([]byte{0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1}, make([]byte, 160)...),
		append([]byte{0x80, 0, 0, 3, 0, 0, 1, 64, 0, 0, 0, 1}, make([]byte, 160)...),
		append([]byte{0x80, 0, 0, 4, 64, 0, 1, 224, 0, 0, 0, 1}, make([]byte, 160)...), uint8(20))
	f.Fuzz(func(t *testing.T, a, b, c3 []byte, gapMS uint8) {
		frames := 0
		c := newCutter(8000, 60*time.Millisecond, 400*time.Millisecond, 0xFF, func(p []byte, _ bool) {
			if len(p) != 160 {
				t.Fatalf("frame of %d bytes", len(p))
			}
			frames++
		})
		d := dtmfDetector{report: func(dtmfEvent) {}}
		now := time.Unix(0, 0)
		for _, raw := range [][]byte{a, b, c3, a, b, c3} {
			var pkt rtp.Packet
			if pkt.Unmarshal(raw) != nil {
				continue
			}
			now = now.Add(time.Duration(gapMS) * time.Millisecond)
			if pkt.PayloadType == 101 {
				d.push(pkt.Timestamp, pkt.SSRC, pkt.Payload)
			} else {
				before := frames
				c.push(now, pkt.SequenceNumber, pkt.Timestamp, pkt.SSRC, pkt.Marker, pkt.Payload)
				if n := frames - before; n > timeline.MaxFramesPerPacket {
					t.Fatalf("one packet made %d frames, bound %d", n, timeline.MaxFramesPerPacket)
				}
			}
			if gapMS&0x80 != 0 { // a pause: the reorder buffer gives up, silence is filled
				c.idle(now.Add(time.Second))
			}
			c.mediaPos(pkt.Timestamp, pkt.SSRC)
		}
		c.finish()
		d.flush()
	})
}

// fakeConn is a net.Conn that reads from a byte slice and discards writes.
type fakeConn struct {
	net.Conn
	r io.Reader
}

func (f *fakeConn) Read(p []byte) (int, error)  { return f.r.Read(p) }
func (f *fakeConn) Write(p []byte) (int, error) { return len(p), nil }
func (f *fakeConn) RemoteAddr() net.Addr        { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5060} }

// FuzzTCPFraming feeds arbitrary streams through the TCP guard: it never panics, and every
// message it hands to sipgo parses.
func FuzzTCPFraming(f *testing.F) {
	files, _ := filepath.Glob("testdata/rfc4475/*.dat")
	for i, p := range files {
		b, err := os.ReadFile(p)
		if err == nil && i%3 == 0 {
			f.Add(append(append([]byte("\r\n\r\n"), b...), b...))
		}
	}
	m := newMetrics(prometheus.NewRegistry())
	f.Fuzz(func(t *testing.T, stream []byte) {
		c := &guardTCPConn{Conn: &fakeConn{r: bytes.NewReader(stream)}, m: m, parser: sip.NewParser()}
		var out []byte
		buf := make([]byte, 1024)
		for {
			n, err := c.Read(buf)
			out = append(out, buf[:n]...)
			if err != nil {
				break
			}
		}
		rest := bytes.TrimLeft(out, "\r\n")
		p := sip.NewParser()
		for len(rest) > 0 {
			end := bytes.Index(rest, []byte("\r\n\r\n"))
			if end < 0 {
				t.Fatalf("unframed bytes handed on: %q", rest)
			}
			cl, _ := contentLength(rest[:end])
			msg := rest[:min(len(rest), end+4+cl)]
			if _, err := p.ParseSIP(msg); err != nil {
				t.Fatalf("handed on a message that does not parse: %v\n%q", err, msg)
			}
			rest = bytes.TrimLeft(rest[len(msg):], "\r\n")
		}
	})
}
