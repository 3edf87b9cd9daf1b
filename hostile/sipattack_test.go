package hostile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// seriesBound is how many /metrics series one flood of distinct values may add.
const seriesBound = 50

// rfc4475 sends the RFC 4475 torture messages over UDP from an address of our own at port 5060
// (where the messages' Vias send the answers), then checks the node still answers OPTIONS.
func (s *suite) rfc4475(t *testing.T, r *row) {
	files, _ := filepath.Glob("../internal/sip/testdata/rfc4475/*.dat")
	if len(files) < 49 {
		t.Fatalf("RFC 4475 messages not found (%d files)", len(files))
	}
	var c *sipClient
	for i := 0; c == nil && i < 20; i++ {
		ip := net.IPv4(127, byte(64+rand.IntN(128)), byte(rand.IntN(256)), byte(1+rand.IntN(250)))
		if l, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip, Port: 5060}); err == nil {
			l.Close()
			c = newSIPClient(t, ip, 5060, s.n.sip)
		}
	}
	if c == nil {
		t.Fatal("no loopback address free at port 5060")
	}
	var msgs [][]byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, b)
	}
	for _, m := range msgs {
		c.send(m)
		time.Sleep(5 * time.Millisecond)
	}
	c.quiet(time.Second, 15*time.Second)
	fin := c.finals()
	answered := 0
	for _, v := range fin {
		answered += v
	}
	r.didf("%d messages: %d answered here (%s), the rest dropped or answered to the Via's host", len(msgs), answered, codes(fin))
	if fin[500] > 0 {
		r.failf("%d answered 500 (a handler failed)", fin[500])
	}
	s.ping(t, r, c)
}

// ping checks the node answers an OPTIONS with 200.
func (s *suite) ping(t *testing.T, r *row, c *sipClient) {
	id := fmt.Sprintf("ping-%016x", rand.Uint64())
	c.send(c.request("OPTIONS", c.ruri(), id, 1, c.toHdr(), "", ""))
	var fin string
	eventually(10*time.Second, func() bool { fin = c.final(id); return fin != "" })
	if !strings.HasPrefix(fin, "SIP/2.0 200") {
		r.failf("OPTIONS after the attack: %q, want 200", strings.SplitN(fin, "\r\n", 2)[0])
	}
}

// methodFlood sends 20,000 requests with distinct method names.
func (s *suite) methodFlood(t *testing.T, r *row) {
	c := newSIPClient(t, net.IPv4(127, 0, 0, 1), 0, s.n.sip)
	const n = 20000
	msgs := make([][]byte, n)
	for i := range msgs {
		msgs[i] = c.request(fmt.Sprintf("XFLOOD%d", i), c.ruri(), fmt.Sprintf("mf-%d", i), 1, c.toHdr(), "", "")
	}
	c.sendPaced(msgs, 200)
	c.quiet(time.Second, 10*time.Second)
	r.didf("%d requests: %s, %d unanswered", n, codes(c.finals()), n-c.received())
	_, after := s.n.metrics()
	if grew := after - r.series[0]; grew >= seriesBound {
		r.failf("/metrics grew by %d series, want < %d", grew, seriesBound)
	}
	s.ping(t, r, c)
}

// headerFlood sends requests with thousands of headers, one 60 KB header and 65,000-byte junk
// datagrams over UDP, and a megabyte of header bytes over TCP.
func (s *suite) headerFlood(t *testing.T, r *row) {
	c := newSIPClient(t, net.IPv4(127, 0, 0, 1), 0, s.n.sip)
	const each = 100
	var many, long strings.Builder
	for i := 0; i < 4000; i++ {
		fmt.Fprintf(&many, "X-H%d: v\r\n", i)
	}
	long.WriteString("X-Long: ")
	long.WriteString(strings.Repeat("a", 60000))
	long.WriteString("\r\n")
	junk := make([]byte, 65000)
	for i := range junk {
		junk[i] = byte(rand.IntN(256))
	}
	var msgs [][]byte
	for i := 0; i < each; i++ {
		msgs = append(msgs,
			c.request("OPTIONS", c.ruri(), fmt.Sprintf("hm-%d", i), 1, c.toHdr(), many.String(), ""),
			c.request("OPTIONS", c.ruri(), fmt.Sprintf("hl-%d", i), 1, c.toHdr(), long.String(), ""),
			junk)
	}
	c.sendPaced(msgs, 50)
	c.quiet(time.Second, 10*time.Second)
	r.didf("UDP: %d with 4,000 headers, %d with a 60 KB header, %d junk 65,000-byte datagrams: %s", each, each, each, codes(c.finals()))

	// TCP: a header section that never ends must get the connection closed.
	conn, err := net.DialTimeout("tcp", s.n.sip.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	head := fmt.Sprintf("OPTIONS sip:hostile@%s SIP/2.0\r\nVia: SIP/2.0/TCP %s;branch=z9hG4bKtcpflood\r\n", s.n.sip, conn.LocalAddr())
	sent, closed := 0, false
	_, werr := conn.Write([]byte(head))
	line := []byte("X-Flood: " + strings.Repeat("b", 1000) + "\r\n")
	for werr == nil && sent < 1<<20 {
		_, werr = conn.Write(line)
		sent += len(line)
	}
	if werr != nil && !isTimeout(werr) {
		closed = true // reset or broken pipe: the node closed it
	}
	reply, rerr := io.ReadAll(io.LimitReader(conn, 64<<10))
	if rerr == nil || !isTimeout(rerr) {
		closed = true // EOF or reset
	}
	first, _, _ := bytes.Cut(reply, []byte("\r\n"))
	r.didf("TCP: %d KB of one header section: answered %q, connection closed: %v", sent>>10, first, closed)
	if !closed {
		r.failf("the TCP connection with an endless header section was not closed")
	}
	s.ping(t, r, c)
}

// inviteFlood sends 2,000 INVITEs in a burst from one source; a legitimate INVITE from another
// source must still connect.
func (s *suite) inviteFlood(t *testing.T, r *row) {
	c := newSIPClient(t, net.IPv4(127, 0, 0, 1), 0, s.n.sip)
	rtp := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	// The node's defaults: 50 INVITEs/s from one source after a burst of 100. While the flood is
	// sent and read the bucket refills, so the bound is the burst plus the rate over the sending
	// time and one second for the node to read what its socket holds.
	const n, burst, rate = 2000, 100, 50
	msgs := make([][]byte, n)
	for i := range msgs {
		msgs[i] = c.request("INVITE", c.ruri(), fmt.Sprintf("if-%d-%08x", i, rand.Uint32()), 1, c.toHdr(), "", sdpOffer(rtp))
	}
	start := time.Now()
	for _, m := range msgs {
		c.send(m)
	}
	bound := burst + int(rate*(time.Since(start).Seconds()+1))
	legit := newSIPClient(t, net.IPv4(127, 0, 0, 2), 0, s.n.sip)
	call, why := legit.call(t, fmt.Sprintf("legit-%08x", rand.Uint32()))
	c.quiet(3*time.Second, 30*time.Second)
	fin := c.finals()
	r.didf("%d INVITEs from one source: %s, %d without a final answer", n, codes(fin), n-func() int {
		k := 0
		for _, v := range fin {
			k += v
		}
		return k
	}())
	rejected, rejections := c.rejections()
	r.didf("%d rejections sent for %d rejected INVITEs (retransmitted toward a source that never ACKed)", rejections, rejected)
	if rejections > rejected {
		r.failf("%d retransmitted rejections toward a source that never completed a handshake, want 0", rejections-rejected)
	}
	if call != nil {
		r.didf("an INVITE from 127.0.0.2 connected")
		call.bye()
	} else {
		r.didf("an INVITE from 127.0.0.2 got %s", why)
		r.failf("a legitimate INVITE from another source did not connect: %s", why)
	}
	if fin[200] > bound {
		r.failf("%d of %d INVITEs from one source in a burst were answered 200, want ≤ %d (rate limited)", fin[200], n, bound)
	}
	// Hang up what the flood set up, so that later attacks start from an idle SIP side.
	c.mu.Lock()
	var ends [][]byte
	for id, rs := range c.resp {
		for _, m := range rs {
			if strings.HasPrefix(m, "SIP/2.0 200") {
				to, contact := c.toHdr(), c.ruri()
				if x := toRe.FindStringSubmatch(m); x != nil {
					to = x[1]
				}
				if x := contactRe.FindStringSubmatch(m); x != nil {
					contact = x[1]
				}
				ends = append(ends, c.request("ACK", contact, id, 1, to, "", ""), c.request("BYE", contact, id, 2, to, "", ""))
				break
			}
		}
	}
	c.mu.Unlock()
	for _, m := range ends {
		c.send(m)
	}
	if !eventually(30*time.Second, func() bool { return s.n.metric("callrouter_sip_calls") == 0 }) {
		r.didf("%v SIP calls still up 30 s after the flood's BYEs", s.n.metric("callrouter_sip_calls"))
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
