package hostile

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	statusRe  = regexp.MustCompile(`^SIP/2\.0 (\d{3})`)
	callIDRe  = regexp.MustCompile(`(?im)^(?:call-id|i)[ \t]*:[ \t]*(\S+)`)
	toRe      = regexp.MustCompile(`(?im)^(?:to|t)[ \t]*:[ \t]*(.+?)\r?$`)
	contactRe = regexp.MustCompile(`(?im)^(?:contact|m)[ \t]*:[^<\r\n]*<([^>]+)>`)
	mAudioRe  = regexp.MustCompile(`(?m)^m=audio (\d+) `)
	cLineRe   = regexp.MustCompile(`(?m)^c=IN IP4 ([0-9.]+)`)
)

// sipClient is a raw SIP user agent over UDP: it sends what it is told and records every
// response it gets, by Call-ID.
type sipClient struct {
	conn *net.UDPConn
	dst  *net.UDPAddr
	mu   sync.Mutex
	resp map[string][]string // Call-ID → responses (full text), in arrival order
	n    int                 // responses received
}

func newSIPClient(t *testing.T, ip net.IP, port int, dst *net.UDPAddr) *sipClient {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip, Port: port})
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadBuffer(8 << 20)
	c := &sipClient{conn: conn, dst: dst, resp: map[string][]string{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			msg := string(buf[:n])
			if !statusRe.MatchString(msg) {
				continue
			}
			id := ""
			if m := callIDRe.FindStringSubmatch(msg); m != nil {
				id = m[1]
			}
			c.mu.Lock()
			c.resp[id] = append(c.resp[id], msg)
			c.n++
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() { conn.Close(); <-done })
	return c
}

func (c *sipClient) local() string { return c.conn.LocalAddr().String() }

func (c *sipClient) send(b []byte) { _, _ = c.conn.WriteToUDP(b, c.dst) }

// request builds a SIP request from this client; to is the To header value (with a tag in a
// dialog), extra holds additional header lines (each ending in CRLF).
func (c *sipClient) request(method, ruri, callID string, cseq int, to, extra, body string) []byte {
	ctype := ""
	if body != "" {
		ctype = "Content-Type: application/sdp\r\n"
	}
	host := c.conn.LocalAddr().(*net.UDPAddr).IP.String()
	return []byte(fmt.Sprintf("%s %s SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK%016x;rport\r\nMax-Forwards: 70\r\n"+
		"From: <sip:attacker@%s>;tag=f%08x\r\nTo: %s\r\nCall-ID: %s\r\nCSeq: %d %s\r\nContact: <sip:attacker@%s>\r\n%s%sContent-Length: %d\r\n\r\n%s",
		method, ruri, c.local(), rand.Uint64(), host, fnv32(callID), to, callID, cseq, method, c.local(), extra, ctype, len(body), body))
}

func fnv32(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h = (h ^ uint32(s[i])) * 16777619
	}
	return h
}

func (c *sipClient) ruri() string { return "sip:hostile@" + c.dst.String() }

func (c *sipClient) toHdr() string { return "<sip:hostile@" + c.dst.String() + ">" }

// received returns how many responses have arrived.
func (c *sipClient) received() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// final returns the first final response for callID, or "".
func (c *sipClient) final(callID string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.resp[callID] {
		if m := statusRe.FindStringSubmatch(r); m != nil && m[1][0] != '1' {
			return r
		}
	}
	return ""
}

// finals counts the first final response of every Call-ID by status code.
func (c *sipClient) finals() map[int]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[int]int{}
	for _, rs := range c.resp {
		for _, r := range rs {
			if m := statusRe.FindStringSubmatch(r); m != nil && m[1][0] != '1' {
				code, _ := strconv.Atoi(m[1])
				out[code]++
				break
			}
		}
	}
	return out
}

// rejections counts the Call-IDs answered with a final response of 300 or more, and those
// responses all told (retransmissions included).
func (c *sipClient) rejections() (calls, msgs int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range c.resp {
		n := 0
		for _, r := range rs {
			if m := statusRe.FindStringSubmatch(r); m != nil && m[1][0] >= '3' {
				n++
			}
		}
		if n > 0 {
			calls++
			msgs += n
		}
	}
	return calls, msgs
}

func codes(m map[int]int) string {
	var ks []int
	for k := range m {
		ks = append(ks, k)
	}
	sort.Ints(ks)
	var out []string
	for _, k := range ks {
		out = append(out, fmt.Sprintf("%d×%d", m[k], k))
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

// sendPaced sends msgs keeping at most window without an answer; a message waits at most 20 ms
// for room, so that messages the node drops do not stall the flood.
func (c *sipClient) sendPaced(msgs [][]byte, window int) {
	base := c.received()
	for i, m := range msgs {
		for wait := 0; i-(c.received()-base) >= window && wait < 20; wait++ {
			time.Sleep(time.Millisecond)
		}
		c.send(m)
	}
}

// quiet waits until no response has arrived for q (at most d).
func (c *sipClient) quiet(q, d time.Duration) {
	deadline := time.Now().Add(d)
	last, at := c.received(), time.Now()
	for time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		if n := c.received(); n != last {
			last, at = n, time.Now()
		} else if time.Since(at) >= q {
			return
		}
	}
}

func sdpOffer(rtp *net.UDPAddr) string {
	return fmt.Sprintf("v=0\r\no=- 1 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\nm=audio %d RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendonly\r\n",
		rtp.IP, rtp.IP, rtp.Port)
}

// sipCall is an answered call made by a sipClient.
type sipCall struct {
	c       *sipClient
	callID  string
	to      string // To of the 200 OK, with the tag
	contact string
	rtp     *net.UDPConn // our RTP socket, the address in the offer
	media   *net.UDPAddr // where the node wants RTP
	seq     uint16
	ts      uint32
	ssrc    uint32
}

// call places a call and ACKs the 200 OK; it returns the final status line if not answered.
func (c *sipClient) call(t *testing.T, callID string) (*sipCall, string) {
	t.Helper()
	rtp, err := net.ListenUDP("udp", &net.UDPAddr{IP: c.conn.LocalAddr().(*net.UDPAddr).IP})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rtp.Close() })
	// Like any UAC over UDP (RFC 3261 Timer A), the INVITE is sent again, at doubling intervals,
	// until something answers it: a flood may have filled the node's socket buffer.
	invite := c.request("INVITE", c.ruri(), callID, 1, c.toHdr(), "", sdpOffer(rtp.LocalAddr().(*net.UDPAddr)))
	c.send(invite)
	interval, next := 500*time.Millisecond, time.Now().Add(500*time.Millisecond)
	var fin string
	eventually(20*time.Second, func() bool {
		if fin = c.final(callID); fin != "" {
			return true
		}
		c.mu.Lock()
		answered := len(c.resp[callID]) > 0
		c.mu.Unlock()
		if !answered && time.Now().After(next) {
			c.send(invite)
			interval = min(2*interval, 4*time.Second)
			next = time.Now().Add(interval)
		}
		return false
	})
	if fin == "" {
		return nil, "no final response in 20 s"
	}
	if !strings.HasPrefix(fin, "SIP/2.0 200") {
		return nil, strings.SplitN(fin, "\r\n", 2)[0]
	}
	sc := &sipCall{c: c, callID: callID, rtp: rtp, ssrc: rand.Uint32(), seq: uint16(rand.Uint32()), ts: rand.Uint32()}
	if m := toRe.FindStringSubmatch(fin); m != nil {
		sc.to = m[1]
	}
	sc.contact = c.ruri()
	if m := contactRe.FindStringSubmatch(fin); m != nil {
		sc.contact = m[1]
	}
	port, ip := mAudioRe.FindStringSubmatch(fin), cLineRe.FindStringSubmatch(fin)
	if port == nil || ip == nil {
		t.Fatalf("200 OK without m= or c= line:\n%s", fin)
	}
	p, _ := strconv.Atoi(port[1])
	sc.media = &net.UDPAddr{IP: net.ParseIP(ip[1]), Port: p}
	c.send(c.request("ACK", sc.contact, callID, 1, sc.to, "", ""))
	return sc, ""
}

// bye ends the call and waits (a bounded time) for the answer.
func (sc *sipCall) bye() {
	id := sc.callID
	sc.c.mu.Lock()
	before := len(sc.c.resp[id])
	sc.c.mu.Unlock()
	sc.c.send(sc.c.request("BYE", sc.contact, id, 2, sc.to, "", ""))
	eventually(5*time.Second, func() bool {
		sc.c.mu.Lock()
		defer sc.c.mu.Unlock()
		return len(sc.c.resp[id]) > before
	})
}

// rtpPacket builds a PCMU packet of 20 ms of silence.
func rtpPacket(seq uint16, ts, ssrc uint32) []byte {
	b := make([]byte, 12+160)
	b[0], b[1] = 0x80, 0
	binary.BigEndian.PutUint16(b[2:], seq)
	binary.BigEndian.PutUint32(b[4:], ts)
	binary.BigEndian.PutUint32(b[8:], ssrc)
	for i := 12; i < len(b); i++ {
		b[i] = 0xff
	}
	return b
}

// next sends the next packet in order.
func (sc *sipCall) next() {
	sc.seq++
	sc.ts += 160
	_, _ = sc.rtp.WriteToUDP(rtpPacket(sc.seq, sc.ts, sc.ssrc), sc.media)
}

// talk sends d of audio in real time.
func (sc *sipCall) talk(d time.Duration) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for end := time.Now().Add(d); time.Now().Before(end); {
		<-tick.C
		sc.next()
	}
}
