package sip

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

// peer is the hop a request came from: its transport ("UDP", "TCP", "TLS"), its source address
// and, with digest auth on, the user it authenticated as.
type peer struct {
	transport string
	addr      netip.AddrPort
	user      string
}

func peerOf(req *sip.Request) peer {
	ap, _ := netip.ParseAddrPort(req.Source())
	return peer{transport: req.Transport(), addr: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}
}

// sameHop reports whether a request from from may act on a dialog (or INVITE transaction)
// whose INVITE came from p, under the check mode (Config.DialogCheck). A dialog set up over TLS
// only ever accepts TLS: a request over another transport is a downgrade.
func sameHop(mode string, p, from peer) bool {
	if mode == DialogCheckOff {
		return p.transport != "TLS" || from.transport == "TLS"
	}
	if p.transport != from.transport || p.addr.Addr() != from.addr.Addr() {
		return false
	}
	return mode == DialogCheckIP || p.transport != "UDP" || p.addr.Port() == from.addr.Port()
}

// Bounds of the INVITE hop table.
const (
	maxInviteHops = 1 << 16
	// inviteHopLife covers an INVITE transaction: RFC 3261 timer B (64 × T1) and placement.
	inviteHopLife = 64 * 500 * time.Millisecond
)

// inviteHops remembers, per INVITE transaction (Call-ID and branch), the hop that sent the
// INVITE, so that the transport guards can refuse a CANCEL from any other hop before sipgo
// matches it to the transaction (RFC 3261 section 22.1: a CANCEL cannot be challenged; a UAS
// accepts it from the hop that sent the request it cancels). The table is bounded: past
// maxInviteHops the oldest entry is forgotten (its CANCEL then goes to sipgo unchecked).
type inviteHops struct {
	mu   sync.Mutex
	m    map[string]hopEntry
	ring []hopSlot // insertion order, maxInviteHops at most
	next int
}

type hopSlot struct {
	key string
	at  time.Time
}

type hopEntry struct {
	p  peer
	at time.Time
}

func newInviteHops() *inviteHops { return &inviteHops{m: map[string]hopEntry{}} }

func hopKey(req *sip.Request) (string, bool) {
	id, via := req.CallID(), req.Via()
	if id == nil || via == nil {
		return "", false
	}
	br, ok := via.Params.Get("branch")
	if !ok || br == "" {
		return "", false
	}
	return id.Value() + "\x00" + br, true
}

// record notes the hop of an initial INVITE.
func (h *inviteHops) record(req *sip.Request, p peer, now time.Time) {
	if h == nil {
		return
	}
	k, ok := hopKey(req)
	if !ok {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if e, ok := h.m[k]; ok && now.Sub(e.at) < inviteHopLife {
		return // a retransmission keeps the first hop
	}
	if len(h.ring) < maxInviteHops {
		h.ring = append(h.ring, hopSlot{k, now})
	} else {
		old := h.ring[h.next]
		if e, ok := h.m[old.key]; ok && e.at.Equal(old.at) {
			delete(h.m, old.key)
		}
		h.ring[h.next] = hopSlot{k, now}
		h.next = (h.next + 1) % maxInviteHops
	}
	h.m[k] = hopEntry{p: p, at: now}
}

// cancelAllowed reports whether a CANCEL from p may cancel its INVITE transaction: true when
// the INVITE came from the same hop (or is not known here).
func (h *inviteHops) cancelAllowed(mode string, req *sip.Request, p peer, now time.Time) bool {
	if h == nil {
		return true
	}
	k, ok := hopKey(req)
	if !ok {
		return true
	}
	h.mu.Lock()
	e, found := h.m[k]
	h.mu.Unlock()
	if !found || now.Sub(e.at) >= inviteHopLife {
		return true
	}
	return sameHop(mode, e.p, p)
}

// gate is the access check the transport guards apply to every parsed message before sipgo
// sees it: the source allow-list for requests and responses alike, and the hop of CANCELs.
type gate struct {
	pol  *policy
	hops *inviteHops
	mode string // Config.DialogCheck
	m    *metrics
}

// admit returns "" when a request from p may go on to sipgo, else the reason it is refused
// (the guard answers 403 statelessly, ACKs excepted, and counts it). It records the hop of
// every initial INVITE it admits.
func (g *gate) admit(req *sip.Request, p peer, now time.Time) string {
	if g == nil {
		return ""
	}
	if !g.pol.allowed(p.addr.Addr()) {
		return "allow_list"
	}
	switch {
	case initialInvite(req):
		g.hops.record(req, p, now)
	case req.Method == sip.CANCEL && !g.hops.cancelAllowed(g.mode, req, p, now):
		return "cancel_source"
	}
	return ""
}

// allowedSource reports whether a response from src may go on to sipgo.
func (g *gate) allowedSource(src netip.Addr) bool { return g == nil || g.pol.allowed(src) }

// refuse counts a refused request and returns the stateless 403 to send (nil for an ACK,
// which is never answered).
func (g *gate) refuse(reason string, req *sip.Request, msg []byte, src net.Addr) ([]byte, net.Addr) {
	g.m.forbidden.WithLabelValues(reason).Inc()
	if req.Method == sip.ACK {
		return nil, nil
	}
	return statelessResponse(headLines(msg), src, 403, "Forbidden", `Warning: 399 callrouter "`+forbiddenText[reason]+`"`+"\r\n")
}

// forbiddenText is the Warning text of each refusal reason.
var forbiddenText = map[string]string{
	"allow_list":    "source not allowed",
	"cancel_source": "CANCEL not from the INVITE's hop",
	"dialog_source": "request not from the dialog's peer",
	"dialog_user":   "request not from the dialog's user",
	"tenant":        "unknown tenant",
	"user_tenant":   "tenant not allowed for this user",
}

// apOf returns a socket address as a netip.AddrPort (IPv4-mapped addresses unmapped).
func apOf(a net.Addr) netip.AddrPort {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// forbid answers 403 with the reason's Warning and counts it.
func (s *Server) forbid(req *sip.Request, tx sip.ServerTransaction, reason string) {
	s.m.forbidden.WithLabelValues(reason).Inc()
	s.respond(req, tx, 403, "Forbidden", warning(`399 callrouter "`+forbiddenText[reason]+`"`))
}

// checkDialog checks an in-dialog request (BYE, re-INVITE, UPDATE, INFO) against the peer
// that set the dialog up: the same hop (Config.DialogCheck), and with digest auth on the same
// user, whose credentials the request must carry (RFC 3261 section 22.1: any request but ACK
// and CANCEL may be challenged). It returns false when it has answered: 403 for another hop or
// another user, 401 for missing, wrong or stale credentials.
func (s *Server) checkDialog(req *sip.Request, tx sip.ServerTransaction, c *callState) bool {
	from := peerOf(req)
	if !sameHop(s.cfg.DialogCheck, c.peer, from) {
		s.secLog.Warn().Str("sip_call_id", req.CallID().Value()).Str("method", methodLabel(req.Method)).Str("from", from.transport+" "+from.addr.String()).
			Str("peer", c.peer.transport+" "+c.peer.addr.String()).Msg("SIP in-dialog request from another hop refused")
		s.forbid(req, tx, "dialog_source")
		return false
	}
	if s.auth == nil || c.peer.user == "" {
		return true
	}
	user, ok, stale := "", false, false
	if h := req.GetHeader("Authorization"); h != nil {
		user, ok, stale = s.auth.check(h.Value(), string(req.Method))
	}
	switch {
	case ok && user != c.peer.user:
		s.secLog.Warn().Str("sip_call_id", req.CallID().Value()).Str("method", methodLabel(req.Method)).Str("user", user).Msg("SIP in-dialog request from another user refused")
		s.forbid(req, tx, "dialog_user")
		return false
	case !ok:
		s.respond(req, tx, 401, "Unauthorized", sip.NewHeader("WWW-Authenticate", s.auth.challenge(stale)))
		return false
	}
	return true
}
