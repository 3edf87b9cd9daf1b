// Package sdp parses and writes the subset of SDP (RFC 8866) that an audio-only RTP receiver
// needs for offer/answer (RFC 3264): connection addresses, audio media lines with their payload
// types, rtpmap/fmtp/ptime, direction and label (RFC 4574, used by SIPREC). It uses the standard
// library only and never panics on any input.
package sdp

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Limits on what Parse accepts.
const (
	MaxSize   = 64 << 10 // bytes of SDP
	MaxMedia  = 16       // m= lines
	MaxFormat = 32       // payload types per m= line
)

// Errors returned by Parse.
var (
	// ErrSyntax means the description is not SDP.
	ErrSyntax = errors.New("sdp: syntax error")
	// ErrTooLarge means the description exceeds MaxSize, MaxMedia or MaxFormat.
	ErrTooLarge = errors.New("sdp: too large")
)

// Direction is a media stream's direction attribute.
type Direction string

// Directions (RFC 3264 section 5.1).
const (
	SendRecv Direction = "sendrecv"
	SendOnly Direction = "sendonly"
	RecvOnly Direction = "recvonly"
	Inactive Direction = "inactive"
)

// Format is one payload type of a media line with its rtpmap and fmtp.
type Format struct {
	PT       uint8
	Encoding string // upper-case as written, e.g. "PCMU"; empty without rtpmap
	Clock    uint32
	Channels int
	Fmtp     string
}

// Media is one m= section.
type Media struct {
	Type      string // "audio", "video", ...
	Port      int
	Proto     string // "RTP/AVP", ...
	Formats   []Format
	Conn      netip.Addr // the section's c= address, or the session's
	Direction Direction
	Ptime     int      // milliseconds, 0 when absent
	Label     string   // a=label (RFC 4574)
	Crypto    []string // a=crypto values (RFC 4568 SDES), in offer order, at most maxCrypto
}

// maxCrypto bounds the a=crypto lines kept per media section.
const maxCrypto = 16

// Session is a parsed description.
type Session struct {
	Origin string // o= line value
	Conn   netip.Addr
	Media  []Media
}

// Format returns the media line's format with payload type pt.
func (m *Media) Format(pt uint8) (Format, bool) {
	for _, f := range m.Formats {
		if f.PT == pt {
			return f, true
		}
	}
	return Format{}, false
}

// static payload types of RFC 3551 that audio receivers care about.
var static = map[uint8]Format{
	0: {PT: 0, Encoding: "PCMU", Clock: 8000, Channels: 1},
	8: {PT: 8, Encoding: "PCMA", Clock: 8000, Channels: 1},
	9: {PT: 9, Encoding: "G722", Clock: 8000, Channels: 1},
}

// Parse parses an SDP body. It is lenient where real peers are sloppy (LF line ends, unknown
// lines, trailing spaces) and strict on what an answer depends on.
func Parse(b []byte) (*Session, error) {
	if len(b) > MaxSize {
		return nil, ErrTooLarge
	}
	s := &Session{}
	var cur *Media
	sawV := false
	for len(b) > 0 {
		var line []byte
		if i := indexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			line, b = b, nil
		}
		l := strings.TrimRight(string(line), "\r \t")
		if l == "" {
			continue
		}
		if len(l) < 2 || l[1] != '=' {
			return nil, fmt.Errorf("%w: line %q", ErrSyntax, trunc(l))
		}
		k, v := l[0], l[2:]
		switch k {
		case 'v':
			if v != "0" {
				return nil, fmt.Errorf("%w: version %q", ErrSyntax, trunc(v))
			}
			sawV = true
		case 'o':
			s.Origin = v
		case 'c':
			a, err := parseConn(v)
			if err != nil {
				return nil, err
			}
			if cur != nil {
				cur.Conn = a
			} else {
				s.Conn = a
			}
		case 'm':
			if len(s.Media) >= MaxMedia {
				return nil, ErrTooLarge
			}
			m, err := parseMedia(v)
			if err != nil {
				return nil, err
			}
			s.Media = append(s.Media, m)
			cur = &s.Media[len(s.Media)-1]
		case 'a':
			if cur != nil {
				if err := cur.attr(v); err != nil {
					return nil, err
				}
			}
		}
	}
	if !sawV {
		return nil, fmt.Errorf("%w: no v= line", ErrSyntax)
	}
	for i := range s.Media {
		m := &s.Media[i]
		if !m.Conn.IsValid() {
			m.Conn = s.Conn
		}
		if m.Direction == "" {
			m.Direction = SendRecv
		}
		for j := range m.Formats {
			f := &m.Formats[j]
			if f.Encoding == "" {
				if st, ok := static[f.PT]; ok {
					f.Encoding, f.Clock, f.Channels = st.Encoding, st.Clock, st.Channels
				}
			}
		}
	}
	return s, nil
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

func trunc(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

func parseConn(v string) (netip.Addr, error) {
	f := strings.Fields(v)
	if len(f) < 3 || f[0] != "IN" || (f[1] != "IP4" && f[1] != "IP6") {
		return netip.Addr{}, fmt.Errorf("%w: connection %q", ErrSyntax, trunc(v))
	}
	host, _, _ := strings.Cut(f[2], "/") // multicast TTL
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%w: connection address %q", ErrSyntax, trunc(host))
	}
	return a.Unmap(), nil
}

func parseMedia(v string) (Media, error) {
	f := strings.Fields(v)
	if len(f) < 3 {
		return Media{}, fmt.Errorf("%w: media %q", ErrSyntax, trunc(v))
	}
	portS, _, _ := strings.Cut(f[1], "/")
	port, err := strconv.Atoi(portS)
	if err != nil || port < 0 || port > 65535 {
		return Media{}, fmt.Errorf("%w: media port %q", ErrSyntax, trunc(f[1]))
	}
	m := Media{Type: f[0], Port: port, Proto: f[2]}
	if len(f)-3 > MaxFormat {
		return Media{}, ErrTooLarge
	}
	if strings.HasPrefix(m.Proto, "RTP/") {
		for _, pt := range f[3:] {
			n, err := strconv.Atoi(pt)
			if err != nil || n < 0 || n > 127 {
				return Media{}, fmt.Errorf("%w: payload type %q", ErrSyntax, trunc(pt))
			}
			m.Formats = append(m.Formats, Format{PT: uint8(n)})
		}
	}
	return m, nil
}

func (m *Media) attr(v string) error { //nolint:unparam // kept for stricter attributes
	name, val, _ := strings.Cut(v, ":")
	switch name {
	case "sendrecv", "sendonly", "recvonly", "inactive":
		m.Direction = Direction(name)
	case "ptime":
		n, err := strconv.Atoi(strings.TrimSpace(val))
		if err == nil && n > 0 && n <= 1000 {
			m.Ptime = n
		}
	case "label":
		m.Label = strings.TrimSpace(val)
	case "crypto":
		if len(m.Crypto) < maxCrypto {
			m.Crypto = append(m.Crypto, strings.TrimSpace(val))
		}
	case "rtpmap":
		// A malformed rtpmap (RFC 4475's "a=rtpmap:31 LPC") leaves its format unnamed, so it is
		// never chosen; it does not make the whole offer unusable.
		ptS, rest, _ := strings.Cut(val, " ")
		pt, err := strconv.Atoi(ptS)
		if err != nil || pt < 0 || pt > 127 {
			return nil
		}
		parts := strings.Split(strings.TrimSpace(rest), "/")
		if len(parts) < 2 {
			return nil
		}
		clock, err := strconv.ParseUint(parts[1], 10, 32)
		if err != nil || clock == 0 {
			return nil
		}
		ch := 1
		if len(parts) > 2 {
			if ch, err = strconv.Atoi(parts[2]); err != nil || ch < 1 || ch > 8 {
				return nil
			}
		}
		for i := range m.Formats {
			if m.Formats[i].PT == uint8(pt) {
				m.Formats[i].Encoding, m.Formats[i].Clock, m.Formats[i].Channels = parts[0], uint32(clock), ch
			}
		}
	case "fmtp":
		ptS, rest, _ := strings.Cut(val, " ")
		pt, err := strconv.Atoi(ptS)
		if err != nil || pt < 0 || pt > 127 {
			return nil // tolerated: fmtp is advisory here
		}
		for i := range m.Formats {
			if m.Formats[i].PT == uint8(pt) {
				m.Formats[i].Fmtp = strings.TrimSpace(rest)
			}
		}
	}
	return nil
}

// Answer is what a receiver answers for one offered media line.
type Answer struct {
	Port      int // 0 rejects the stream
	Formats   []Format
	Direction Direction
	Ptime     int
	Label     string
	Type      string
	Proto     string
	Crypto    string // an a=crypto value (RFC 4568), empty for none
}

// Marshal writes an answer description with one m= line per offered line, in order (RFC 3264
// section 6).
func Marshal(origin string, version uint64, addr netip.Addr, answers []Answer) []byte {
	ipv := "IP4"
	if addr.Is6() {
		ipv = "IP6"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "v=0\r\no=callrouter %s %d IN %s %s\r\ns=callrouter\r\nc=IN %s %s\r\nt=0 0\r\n", origin, version, ipv, addr, ipv, addr)
	for _, a := range answers {
		typ, proto := a.Type, a.Proto
		if typ == "" {
			typ = "audio"
		}
		if proto == "" {
			proto = "RTP/AVP"
		}
		fmt.Fprintf(&b, "m=%s %d %s", typ, a.Port, proto)
		if len(a.Formats) == 0 {
			b.WriteString(" 0")
		}
		for _, f := range a.Formats {
			fmt.Fprintf(&b, " %d", f.PT)
		}
		b.WriteString("\r\n")
		if a.Port == 0 {
			continue
		}
		for _, f := range a.Formats {
			if f.Encoding != "" {
				fmt.Fprintf(&b, "a=rtpmap:%d %s/%d\r\n", f.PT, f.Encoding, f.Clock)
			}
			if f.Fmtp != "" {
				fmt.Fprintf(&b, "a=fmtp:%d %s\r\n", f.PT, f.Fmtp)
			}
		}
		if a.Ptime > 0 {
			fmt.Fprintf(&b, "a=ptime:%d\r\n", a.Ptime)
		}
		if a.Label != "" {
			fmt.Fprintf(&b, "a=label:%s\r\n", a.Label)
		}
		if a.Crypto != "" {
			fmt.Fprintf(&b, "a=crypto:%s\r\n", a.Crypto)
		}
		if a.Direction != "" {
			fmt.Fprintf(&b, "a=%s\r\n", a.Direction)
		}
	}
	return []byte(b.String())
}
