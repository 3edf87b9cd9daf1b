package sip

import (
	"bytes"
	"io"
	"net"
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"
)

// Bounds of the TCP guard's framing.
const (
	maxTCPHeader  = 64 << 10
	maxTCPMessage = 256 << 10
)

// guardListener wraps the SIP TCP listener so that every connection is framed and checked by
// callrouter before sipgo reads it: the TCP counterpart of guardConn.
type guardListener struct {
	net.Listener
	m *metrics
}

func (l *guardListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &guardTCPConn{Conn: c, m: l.m, parser: sip.NewParser()}, nil
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
}

func (c *guardTCPConn) Read(p []byte) (int, error) {
	for len(c.out) == 0 {
		if c.closed {
			return 0, io.EOF
		}
		if c.frame() {
			continue
		}
		n, err := c.Conn.Read(c.buf[:])
		c.in = append(c.in, c.buf[:n]...)
		if err != nil && n == 0 {
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
			_, _ = c.Conn.Write(res)
		}
		return true
	}
	if req, ok := m.(*sip.Request); ok {
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
		_, _ = c.Conn.Write(res)
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
