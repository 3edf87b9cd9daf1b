package sip

import (
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// uac is a minimal SIP client over UDP for the tests that SIPp cannot express compactly.
type uac struct {
	t    testing.TB
	conn *net.UDPConn
	dst  *net.UDPAddr
	rtp  *net.UDPConn
	in   chan string
}

func newUAC(t testing.TB, addr string) *uac { return newUACAt(t, addr, net.IPv4(127, 0, 0, 1)) }

// newUACAt is newUAC with its SIP and RTP sockets on ip (another loopback address plays another
// host).
func newUACAt(t testing.TB, addr string, ip net.IP) *uac {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip})
	if err != nil {
		t.Fatal(err)
	}
	r, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip})
	if err != nil {
		t.Fatal(err)
	}
	dst, _ := net.ResolveUDPAddr("udp", addr)
	u := &uac{t: t, conn: c, dst: dst, rtp: r, in: make(chan string, 64)}
	go func() {
		buf := make([]byte, 65536)
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				close(u.in)
				return
			}
			u.in <- string(buf[:n])
		}
	}()
	t.Cleanup(func() { c.Close(); r.Close() })
	return u
}

func (u *uac) local() string { return u.conn.LocalAddr().String() }

func (u *uac) rtpPort() int { return u.rtp.LocalAddr().(*net.UDPAddr).Port }

// offer is a PCMU offer whose media port is the uac's RTP socket.
func (u *uac) offer() string {
	return fmt.Sprintf("v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio %d RTP/AVP 0 101\r\n"+
		"a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n", u.rtpPort())
}

// request sends a request and returns its final response (provisional ones are skipped).
func (u *uac) request(method, callID, toTag string, cseq int, hdrs, ctype, body string) string {
	u.t.Helper()
	u.send(sipMessage(method, u.dst.String(), "UDP", u.local(), "z9hG4bK"+strconv.FormatInt(rand.Int64(), 10), callID, toTag, cseq, hdrs, ctype, body))
	if method == "ACK" {
		return ""
	}
	return u.await(callID, method)
}

// sipMessage builds a request from the From tag "ft<Call-ID>" of user alice, as every test
// client here does (so that a forger can build the same dialog identifiers).
func sipMessage(method, dst, transport, local, branch, callID, toTag string, cseq int, hdrs, ctype, body string) string {
	to := "<sip:svc@" + dst + ">"
	if toTag != "" {
		to += ";tag=" + toTag
	}
	contact := "<sip:alice@" + local + ">"
	if transport != "UDP" {
		contact = "<sip:alice@" + local + ";transport=" + strings.ToLower(transport) + ">"
	}
	msg := fmt.Sprintf("%s sip:svc@%s SIP/2.0\r\nVia: SIP/2.0/%s %s;rport;branch=%s\r\nFrom: \"Test\" <sip:alice@127.0.0.1>;tag=ft%s\r\n"+
		"To: %s\r\nCall-ID: %s\r\nCSeq: %d %s\r\nContact: %s\r\nMax-Forwards: 70\r\n%s",
		method, dst, transport, local, branch, callID, to, callID, cseq, method, contact, hdrs)
	if body != "" {
		msg += "Content-Type: " + ctype + "\r\n"
	}
	return msg + "Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
}

// send sends a raw message to the server.
func (u *uac) send(msg string) {
	u.t.Helper()
	if _, err := u.conn.WriteToUDP([]byte(msg), u.dst); err != nil {
		u.t.Fatal(err)
	}
}

// await returns the next final response for callID to method (provisional ones, and responses
// to other methods, are skipped).
func (u *uac) await(callID, method string) string {
	u.t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case m := <-u.in:
			if strings.HasPrefix(m, "SIP/2.0 1") || !strings.Contains(m, callID) || !regexp.MustCompile(`(?m)^CSeq: *\d+ `+method+`\r?$`).MatchString(m) {
				continue
			}
			if strings.HasPrefix(m, "SIP/2.0 ") {
				return m
			}
		case <-timeout:
			u.t.Fatalf("no final response to %s %s", method, callID)
		}
	}
}

var (
	toTagRe   = regexp.MustCompile(`(?m)^To:.*;tag=([^;\s]+)`)
	mPortRe   = regexp.MustCompile(`(?m)^m=audio (\d+)`)
	headerRe  = func(h string) *regexp.Regexp { return regexp.MustCompile(`(?mi)^` + h + `:\s*(.*?)\r?$`) }
	codeOf    = func(res string) string { return res[8:11] }
	callIDSeq = 0
)

func newCallID(prefix string) string {
	callIDSeq++
	return fmt.Sprintf("%s-%d-%d@127.0.0.1", prefix, callIDSeq, rand.IntN(1e9))
}

// invite sends an INVITE with the uac's offer and, on 200, ACKs it; it returns the response.
func (u *uac) invite(callID, hdrs string) string {
	res := u.request("INVITE", callID, "", 1, hdrs, "application/sdp", u.offer())
	if codeOf(res) == "200" {
		u.request("ACK", callID, toTagRe.FindStringSubmatch(res)[1], 1, "", "", "")
	}
	return res
}

// awaitBye waits for the server's BYE for callID and answers it 200.
func (u *uac) awaitBye(callID string, within time.Duration) bool {
	deadline := time.After(within)
	for {
		select {
		case m := <-u.in:
			if !strings.HasPrefix(m, "BYE ") || !strings.Contains(m, callID) {
				continue
			}
			res := "SIP/2.0 200 OK\r\n"
			for _, h := range []string{"Via", "From", "To", "Call-ID", "CSeq"} {
				if v := headerRe(h).FindStringSubmatch(m); v != nil {
					res += h + ": " + v[1] + "\r\n"
				}
			}
			res += "Content-Length: 0\r\n\r\n"
			_, _ = u.conn.WriteToUDP([]byte(res), u.dst)
			return true
		case <-deadline:
			return false
		}
	}
}

// sendRTP sends n 20 ms PCMU packets from conn to the answer's media port.
func sendRTP(t testing.TB, conn *net.UDPConn, port, n int, seq0 uint16, ts0 uint32) {
	t.Helper()
	dst := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
	pkt := make([]byte, 12+160)
	pkt[0], pkt[1] = 0x80, 0
	for i := 0; i < n; i++ {
		seq, ts := seq0+uint16(i), ts0+uint32(160*i)
		pkt[2], pkt[3] = byte(seq>>8), byte(seq)
		pkt[4], pkt[5], pkt[6], pkt[7] = byte(ts>>24), byte(ts>>16), byte(ts>>8), byte(ts)
		pkt[11] = 7
		for j := 12; j < len(pkt); j++ {
			pkt[j] = 0x11
		}
		if _, err := conn.WriteToUDP(pkt, dst); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func digestResponse(user, realm, pass, method, uri, nonce, cnonce string, nc int) string {
	h := func(s string) string { x := md5.Sum([]byte(s)); return hex.EncodeToString(x[:]) }
	ha1, ha2 := h(user+":"+realm+":"+pass), h(method+":"+uri)
	return h(fmt.Sprintf("%s:%s:%08x:%s:auth:%s", ha1, nonce, nc, cnonce, ha2))
}
