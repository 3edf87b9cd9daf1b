package sip

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

// Bounds of the TCP guard's framing.
const (
	maxTCPHeader  = 64 << 10
	maxTCPMessage = 256 << 10
)

// guardListener wraps the SIP TCP listener so that every connection is framed and checked by
// callrouter before sipgo reads it: the TCP counterpart of guardConn. It also bounds connections
// (in all and per source address: one past either is closed at once) and their time: a
// connection that carries nothing for the idle timeout, or takes longer than the message timeout
// to send one message (the first one included) or to take one write, is closed.
type guardListener struct {
	net.Listener
	transport string // "TCP" or "TLS"
	gate      *gate
	m         *metrics
	lim       *sourceLimits
	idle      time.Duration
	message   time.Duration
}

func (l *guardListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key, refused := l.lim.acquireConn(addrOf(c.RemoteAddr()))
		if refused != "" {
			l.m.refused.WithLabelValues(refused).Inc()
			_ = c.Close()
			continue
		}
		return &guardTCPConn{Conn: c, m: l.m, parser: sip.NewParser(), lim: l.lim, key: key, idle: l.idle, message: l.message,
			begun: time.Now(), transport: l.transport, gate: l.gate}, nil
	}
}

// guardTCPConn frames the byte stream into SIP messages (RFC 3261 section 18.3: the header
// section, then Content-Length bytes). A message that does not parse gets its stateless error
// response on the connection and is skipped; a stream that cannot be framed (a negative,
// repeated or unreadable Content-Length, an endless header section) gets a 400 if it can be
// answered and the connection is closed, as RFC 4475 section 3.1.2.3 asks. sipgo reads only
// whole, parseable messages.
type guardTCPConn struct {
	net.Conn
	m      *metrics
	parser *sip.Parser
	in     []byte // read, not yet framed
	out    []byte // framed and checked, for sipgo
	buf    [16 << 10]byte
	closed bool

	transport string // "TCP" or "TLS"
	gate      *gate
	lim       *sourceLimits
	key       netip.Addr // the connection's count in lim
	idle      time.Duration
	message   time.Duration
	begun     time.Time // when the message being read began (or the connection opened)
	release   sync.Once
}

// Close closes the connection and gives its slot back.
func (c *guardTCPConn) Close() error {
	err := c.Conn.Close()
	c.release.Do(func() { c.lim.releaseConn(c.key) })
	return err
}

// Write bounds each write by the message timeout: a peer that stops reading is cut off.
func (c *guardTCPConn) Write(p []byte) (int, error) {
	if c.message > 0 {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(c.message))
	}
	return c.Conn.Write(p)
}

// readDeadline is when the next read must have returned: the message timeout from the start of a
// message that is partly in (or from the connection's start, before its first message), else the
// idle timeout from now.
func (c *guardTCPConn) readDeadline(now time.Time) time.Time {
	if len(c.in) > 0 || !c.begun.IsZero() {
		if c.begun.IsZero() {
			c.begun = now
		}
		return c.begun.Add(c.message)
	}
	return now.Add(c.idle)
}

func (c *guardTCPConn) Read(p []byte) (int, error) {
	for len(c.out) == 0 {
		if c.closed {
			return 0, io.EOF
		}
		if c.frame() {
			c.begun = time.Time{} // a message (or keep-alive) is through: the idle timeout runs
			continue
		}
		if c.message > 0 {
			_ = c.Conn.SetReadDeadline(c.readDeadline(time.Now()))
		}
		n, err := c.Conn.Read(c.buf[:])
		c.in = append(c.in, c.buf[:n]...)
		if err != nil && n == 0 {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// An idle or too slow peer: closed, and to sipgo the end of the stream.
				reason := "tcp_idle"
				if len(c.in) > 0 || !c.begun.IsZero() {
					reason = "tcp_slow"
				}
				c.m.refused.WithLabelValues(reason).Inc()
				c.closed = true
				_ = c.Conn.Close()
				return 0, io.EOF
			}
			return 0, err
		}
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}

// frame moves at most one message (or keep-alive CRLFs) from in to out; it reports whether it
// made progress.
func (c *guardTCPConn) frame() bool {
	if len(c.in) == 0 {
		return false
	}
	if c.in[0] == '\r' || c.in[0] == '\n' { // RFC 5626 keep-alives go to sipgo as they are
		i := 0
		for i < len(c.in) && (c.in[i] == '\r' || c.in[i] == '\n') {
			i++
		}
		c.out = append(c.out[:0], c.in[:i]...)
		c.in = c.in[i:]
		return true
	}
	end := bytes.Index(c.in, []byte("\r\n\r\n"))
	if end < 0 {
		if len(c.in) > maxTCPHeader {
			c.reject(c.in)
		}
		return c.closed
	}
	head := c.in[:end]
	cl, ok := contentLength(head)
	if !ok || cl > maxTCPMessage {
		c.reject(c.in[:end+4])
		return true
	}
	total := end + 4 + cl
	if len(c.in) < total {
		return false // wait for the body
	}
	msg := c.in[:total:total]
	c.in = c.in[total:]
	m, err := c.parser.ParseSIP(msg)
	if err != nil {
		c.m.malformed.Inc()
		if res, _ := malformedResponse(msg, c.Conn.RemoteAddr()); res != nil {
			_, _ = c.Write(res)
		}
		return true
	}
	req, isReq := m.(*sip.Request)
	if !isReq && !c.gate.allowedSource(addrOf(c.Conn.RemoteAddr())) {
		c.gate.m.forbidden.WithLabelValues("allow_list").Inc()
		return true
	}
	if isReq {
		now := time.Now()
		if initialInvite(req) && !c.lim.allowInvite(addrOf(c.Conn.RemoteAddr()), now) {
			// Over TCP the source completed a handshake: it is told to come back later.
			c.m.refused.WithLabelValues("invite_rate").Inc()
			if res, _ := statelessResponse(headLines(msg), c.Conn.RemoteAddr(), 503, "Service Unavailable", "Retry-After: 1\r\n"); res != nil {
				_, _ = c.Write(res)
			}
			return true
		}
		if reason := c.gate.admit(req, peer{transport: c.transport, addr: apOf(c.Conn.RemoteAddr())}, now); reason != "" {
			if res, _ := c.gate.refuse(reason, req, msg, c.Conn.RemoteAddr()); res != nil {
				_, _ = c.Write(res)
			}
			return true
		}
		b := make([]byte, len(msg)+128)
		n := copy(b, msg)
		msg = b[:rfc2543Branch(req, b, n)]
	}
	c.out = msg
	return true
}

// reject answers an unframeable stream once and closes the connection.
func (c *guardTCPConn) reject(msg []byte) {
	c.m.malformed.Inc()
	if res, _ := malformedResponse(msg, c.Conn.RemoteAddr()); res != nil {
		_, _ = c.Write(res)
	}
	c.closed = true
	c.in = nil
}

// contentLength returns the single Content-Length of a header section (0 when absent); ok is
// false for a repeated, negative or unreadable value.
func contentLength(head []byte) (int, bool) {
	n, seen := 0, false
	for _, line := range strings.Split(string(head), "\r\n")[1:] {
		name, val, found := strings.Cut(line, ":")
		if !found || line[0] == ' ' || line[0] == '\t' {
			continue
		}
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "content-length", "l":
			if seen {
				return 0, false
			}
			seen = true
			v, err := strconv.Atoi(strings.TrimSpace(val))
			if err != nil || v < 0 {
				return 0, false
			}
			n = v
		}
	}
	return n, true
}
