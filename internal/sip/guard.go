package sip

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"hash/fnv"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
)

// guardConn sits between the UDP socket and sipgo. Every datagram that sipgo's parser would
// reject is taken out here: a request gets a stateless 400 (505 for another SIP version, 416 for
// a request-URI scheme callrouter does not serve) built from its raw Via, From, To, Call-ID and
// CSeq lines, so that the sender learns why (RFC 3261 section 8.2); anything unanswerable is
// dropped and counted. sipgo itself only ever sees messages it can parse.
//
// It also applies the per-source INVITE rate (sourceLimits): an initial INVITE past its source's
// bucket is dropped unanswered, since a UDP source address can be forged and any answer would
// be reflected at whoever owns it. Then the gate: a request from outside the allow-list, or a
// CANCEL from another hop than its INVITE's, gets a stateless 403; a response from outside the
// allow-list is dropped.
type guardConn struct {
	net.PacketConn
	parser *sip.Parser
	m      *metrics
	lim    *sourceLimits
	gate   *gate
}

func (g *guardConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		n, addr, err := g.PacketConn.ReadFrom(b)
		if err != nil || n <= 4 {
			return n, addr, err // errors and CRLF keep-alives go to sipgo as they are
		}
		msg, perr := g.parser.ParseSIP(b[:n])
		if perr == nil {
			req, ok := msg.(*sip.Request)
			if !ok {
				if !g.gate.allowedSource(addrOf(addr)) {
					g.gate.m.forbidden.WithLabelValues("allow_list").Inc()
					continue
				}
				return n, addr, nil
			}
			now := time.Now()
			if initialInvite(req) && !g.lim.allowInvite(addrOf(addr), now) {
				g.m.refused.WithLabelValues("invite_rate").Inc()
				continue
			}
			if reason := g.gate.admit(req, peer{transport: "UDP", addr: apOf(addr)}, now); reason != "" {
				if res, dst := g.gate.refuse(reason, req, b[:n], addr); res != nil {
					_, _ = g.PacketConn.WriteTo(res, dst)
				}
				continue
			}
			return rfc2543Branch(req, b, n), addr, nil
		}
		g.m.malformed.Inc()
		if res, dst := malformedResponse(b[:n], addr); res != nil {
			_, _ = g.PacketConn.WriteTo(res, dst)
		}
	}
}

// initialInvite reports whether req is an INVITE outside a dialog (no To tag): a new call.
func initialInvite(req *sip.Request) bool {
	if req.Method != sip.INVITE {
		return false
	}
	to := req.To()
	if to == nil || to.Params == nil {
		return true
	}
	tag, ok := to.Params.Get("tag")
	return !ok || tag == ""
}

// rfc2543Branch gives a request without an RFC 3261 branch (RFC 2543 clients, RFC 4475's wsinv
// and inv2543) a deterministic one derived from its Call-ID, CSeq and top Via, so that sipgo's
// transaction layer, which needs either a magic-cookie branch or a From tag, can match it and
// its retransmissions. It rewrites the datagram in place and returns its new length.
func rfc2543Branch(req *sip.Request, b []byte, n int) int {
	via := req.Via()
	if via == nil {
		return n
	}
	if br, ok := via.Params.Get("branch"); ok && strings.HasPrefix(br, sip.RFC3261BranchMagicCookie) && len(br) > len(sip.RFC3261BranchMagicCookie) {
		return n
	}
	cseq, cid := "", ""
	if c := req.CSeq(); c != nil {
		cseq = strconv.Itoa(int(c.SeqNo))
	}
	if c := req.CallID(); c != nil {
		cid = c.Value()
	}
	h := fnv.New64a()
	h.Write([]byte(cid + "|" + cseq + "|" + via.Host + "|" + strconv.Itoa(via.Port)))
	add := ";branch=" + sip.RFC3261BranchMagicCookie + "-2543-" + strconv.FormatUint(h.Sum64(), 36)
	// Append the parameter to the top Via value (sipgo reads the last branch), following header
	// line folding.
	start := viaInsertPoint(b[:n])
	if start < 0 || n+len(add) > len(b) {
		return n
	}
	orig := append([]byte(nil), b[:n]...)
	copy(b[start+len(add):n+len(add)], b[start:n])
	copy(b[start:], add)
	if !cookieBranch(b[:n+len(add)]) {
		copy(b, orig) // an odd Via the insertion would break: leave the request to sipgo as it was
		return n
	}
	return n + len(add)
}

// cookieBranch reports whether msg parses as a request whose top Via has an RFC 3261 branch.
func cookieBranch(msg []byte) bool {
	m, err := sip.NewParser().ParseSIP(msg)
	if err != nil {
		return false
	}
	req, ok := m.(*sip.Request)
	if !ok || req.Via() == nil {
		return false
	}
	br, _ := req.Via().Params.Get("branch")
	return strings.HasPrefix(br, sip.RFC3261BranchMagicCookie) && len(br) > len(sip.RFC3261BranchMagicCookie)
}

// viaInsertPoint returns the offset in msg at the end of the first Via value (after its
// parameters, since sipgo reads the last of repeated parameters), or -1.
func viaInsertPoint(msg []byte) int {
	end := bytes.Index(msg, []byte("\r\n\r\n"))
	if end < 0 {
		return -1
	}
	i := bytes.Index(msg, []byte("\r\n"))
	for i >= 0 && i < end {
		ls := i + 2
		le := bytes.Index(msg[ls:], []byte("\r\n"))
		if le < 0 {
			return -1
		}
		le += ls
		name, _, ok := bytes.Cut(msg[ls:le], []byte(":"))
		if ok && canonicalHeader(strings.TrimSpace(string(name))) == "Via" {
			he := le // extend over folded continuation lines
			for he+2 < len(msg) && (msg[he+2] == ' ' || msg[he+2] == '\t') {
				k := bytes.Index(msg[he+2:], []byte("\r\n"))
				if k < 0 {
					return -1
				}
				he += 2 + k
			}
			vs := ls + len(name) + 1
			// skip "SIP / 2.0 / UDP" and whitespace to the sent-by, then to its end
			slashes := 0
			p := vs
			for ; p < he && slashes < 2; p++ {
				if msg[p] == '/' {
					slashes++
				}
			}
			for p < he && (msg[p] == ' ' || msg[p] == '\t' || msg[p] == '\r' || msg[p] == '\n') {
				p++
			}
			inQuote := false
			for ; p < he; p++ {
				if msg[p] == '"' {
					inQuote = !inQuote
				}
				if msg[p] == ',' && !inQuote {
					break
				}
			}
			for p > vs && (msg[p-1] == ' ' || msg[p-1] == '\t' || msg[p-1] == '\r' || msg[p-1] == '\n') {
				p--
			}
			return p
		}
		i = le
	}
	return -1
}

// malformedResponse builds the stateless response to an unparseable request and where to send
// it: the source address, at the top Via's port (or the source port with rport; RFC 3261
// section 18.2.2, RFC 3581). It returns nil for responses and for requests without a Via.
func malformedResponse(msg []byte, src net.Addr) ([]byte, net.Addr) {
	lines := headLines(msg)
	if len(lines) < 2 || strings.HasPrefix(lines[0], "SIP/") {
		return nil, nil
	}
	code, reason := 400, "Bad Request"
	fields := strings.Fields(lines[0])
	if len(fields) == 3 && strings.HasPrefix(fields[2], "SIP/") && fields[2] != "SIP/2.0" {
		code, reason = 505, "Version Not Supported"
	} else if len(fields) == 3 && fields[0] == strings.TrimSpace(strings.SplitN(lines[0], " ", 2)[0]) {
		if scheme, _, ok := strings.Cut(fields[1], ":"); ok && schemeToken(scheme) && !servedScheme(scheme) {
			code, reason = 416, "Unsupported URI Scheme"
		}
	}
	return statelessResponse(lines, src, code, reason, "")
}

// headLines returns the lines of a message's header section.
func headLines(msg []byte) []string {
	head := msg
	if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 {
		head = msg[:i]
	}
	return strings.Split(strings.ReplaceAll(string(head), "\r\n", "\n"), "\n")
}

// statelessResponse builds a response with code and reason (and extra header lines, each ending
// in CRLF) to the request whose header lines are given, from its raw Via, From, To, Call-ID and
// CSeq, and where to send it (RFC 3261 section 18.2.2).
func statelessResponse(lines []string, src net.Addr, code int, reason, extra string) ([]byte, net.Addr) {
	if len(lines) < 2 {
		return nil, nil
	}
	var out strings.Builder
	out.WriteString("SIP/2.0 " + strconv.Itoa(code) + " " + reason + "\r\n")
	var topVia string
	have := map[string]bool{}
	for _, l := range lines[1:] {
		name, val, ok := strings.Cut(l, ":")
		if !ok || len(l) > 4096 {
			continue
		}
		key := canonicalHeader(strings.TrimSpace(name))
		switch key {
		case "Via":
			if topVia == "" {
				topVia = strings.TrimSpace(val)
			}
		case "From", "Call-ID", "CSeq":
			if have[key] {
				continue
			}
		case "To":
			if have[key] {
				continue
			}
			if !strings.Contains(strings.ToLower(val), "tag=") {
				var t [6]byte
				_, _ = rand.Read(t[:])
				val = strings.TrimRight(val, " \t") + ";tag=" + hex.EncodeToString(t[:])
			}
		default:
			continue
		}
		have[key] = true
		out.WriteString(key + ": " + strings.TrimSpace(val) + "\r\n")
	}
	if topVia == "" {
		return nil, nil
	}
	out.WriteString(extra + "Server: callrouter\r\nContent-Length: 0\r\n\r\n")
	srcAP, err := netip.ParseAddrPort(src.String())
	if err != nil {
		return nil, nil
	}
	port := uint16(5060)
	sentBy := topVia
	if i := strings.IndexAny(sentBy, " \t"); i >= 0 {
		sentBy = strings.TrimSpace(sentBy[i:])
	}
	hostport, params, _ := strings.Cut(sentBy, ";")
	if strings.Contains(strings.ReplaceAll(params, " ", ""), "rport") {
		port = srcAP.Port()
	} else if i := strings.LastIndex(hostport, ":"); i >= 0 && !strings.HasSuffix(hostport, "]") {
		if p, err := strconv.Atoi(strings.TrimSpace(hostport[i+1:])); err == nil && p > 0 && p < 65536 {
			port = uint16(p)
		}
	}
	return []byte(out.String()), net.UDPAddrFromAddrPort(netip.AddrPortFrom(srcAP.Addr(), port))
}

func canonicalHeader(n string) string {
	switch strings.ToLower(n) {
	case "via", "v":
		return "Via"
	case "from", "f":
		return "From"
	case "to", "t":
		return "To"
	case "call-id", "i":
		return "Call-ID"
	case "cseq":
		return "CSeq"
	}
	return ""
}

func schemeToken(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		alpha := (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
		if !alpha && (i == 0 || !(c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.')) {
			return false
		}
	}
	return true
}

func servedScheme(s string) bool {
	s = strings.ToLower(s)
	return s == "sip" || s == "sips" || s == "tel"
}

// knownMethods are the methods of RFC 3261 and its extensions; others get 501, these 405.
var knownMethods = map[string]bool{"INVITE": true, "ACK": true, "BYE": true, "CANCEL": true, "OPTIONS": true, "REGISTER": true,
	"PRACK": true, "SUBSCRIBE": true, "NOTIFY": true, "PUBLISH": true, "INFO": true, "REFER": true, "MESSAGE": true, "UPDATE": true}

// supportedExtensions are the option tags a Require header may name (RFC 3261 section 8.2.2.3).
var supportedExtensions = map[string]bool{"timer": true, "siprec": true}

// precheck applies the checks every request gets before its method's handler (RFC 3261 section
// 8.2): version, request-URI scheme, single-valued headers, CSeq method and Require. It
// returns false when it has answered.
func (s *Server) precheck(req *sip.Request, tx sip.ServerTransaction) bool {
	if req.SipVersion != "SIP/2.0" {
		s.respond(req, tx, 505, "Version Not Supported")
		return false
	}
	if !servedScheme(req.Recipient.Scheme) {
		s.respond(req, tx, 416, "Unsupported URI Scheme")
		return false
	}
	for _, h := range []string{"Call-ID", "From", "To", "CSeq", "Max-Forwards", "Content-Length", "Content-Type"} {
		if len(req.GetHeaders(h)) > 1 {
			s.respond(req, tx, 400, "Bad Request", warning(`399 callrouter "more than one `+h+` header"`))
			return false
		}
	}
	if req.CallID() == nil || req.From() == nil || req.To() == nil || req.CSeq() == nil {
		s.respond(req, tx, 400, "Bad Request", warning(`399 callrouter "missing Call-ID, From, To or CSeq"`))
		return false
	}
	if !knownMethods[string(req.Method)] {
		s.respond(req, tx, 501, "Not Implemented", s.allowHeaders()[0])
		return false
	}
	if req.CSeq().MethodName != req.Method {
		s.respond(req, tx, 400, "Bad Request", warning(`399 callrouter "CSeq method does not match the request"`))
		return false
	}
	if req.Method != sip.ACK && req.Method != sip.CANCEL {
		var unsupported []string
		for _, h := range req.GetHeaders("Require") {
			for _, tag := range strings.Split(h.Value(), ",") {
				if tag = strings.TrimSpace(tag); tag != "" && !supportedExtensions[strings.ToLower(tag)] {
					unsupported = append(unsupported, tag)
				}
			}
		}
		if len(unsupported) > 0 {
			s.respond(req, tx, 420, "Bad Extension", sip.NewHeader("Unsupported", strings.Join(unsupported, ", ")))
			return false
		}
	}
	return true
}
