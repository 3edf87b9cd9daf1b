package sip

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/callrouter/callrouter/internal/guard"
)

// maxSources bounds the per-source connection table: sources past it (a flood from forged
// addresses) share one connection count instead of growing the table.
const maxSources = 1 << 16

// sourceLimits holds the per-source bounds the transport guards apply before sipgo sees a
// message: a token bucket of new INVITEs per source address, and the open TCP connections per
// source address and in all.
type sourceLimits struct {
	invites      *guard.SourceRate
	perSource    int // TCP connections per source (0: no bound)
	total        int // TCP connections in all (0: no bound)
	mu           sync.Mutex
	conns        map[netip.Addr]int
	open         int
	overflowConn netip.Addr // the key of sources past maxSources in conns
}

func newSourceLimits(cfg *Config) *sourceLimits {
	return &sourceLimits{invites: guard.NewSourceRate(cfg.InviteRate, cfg.InviteBurst), perSource: cfg.TCPConnsPerSource,
		total: cfg.MaxTCPConns, conns: map[netip.Addr]int{}, overflowConn: netip.IPv6Unspecified()}
}

// allowInvite takes a token from src's INVITE bucket and reports whether there was one. A nil
// sourceLimits allows everything.
func (l *sourceLimits) allowInvite(src netip.Addr, now time.Time) bool {
	return l == nil || l.invites.Allow(src, now)
}

// acquireConn counts a new TCP connection from src under the key it returns (for releaseConn);
// ok is false, and nothing counted, when the listener or the source is at its bound ("tcp_conns"
// or "tcp_source_conns").
func (l *sourceLimits) acquireConn(src netip.Addr) (key netip.Addr, refused string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	key = src
	if _, ok := l.conns[key]; !ok && len(l.conns) >= maxSources {
		key = l.overflowConn
	}
	switch {
	case l.total > 0 && l.open >= l.total:
		return key, "tcp_conns"
	case l.perSource > 0 && l.conns[key] >= l.perSource:
		return key, "tcp_source_conns"
	}
	l.open++
	l.conns[key]++
	return key, ""
}

// releaseConn uncounts a connection acquireConn counted under key.
func (l *sourceLimits) releaseConn(key netip.Addr) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.conns[key]--; l.conns[key] <= 0 {
		delete(l.conns, key)
	}
}

// addrOf returns the IP of a socket address (IPv4-mapped addresses unmapped), or the zero Addr.
func addrOf(a net.Addr) netip.Addr {
	switch v := a.(type) {
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(v.IP)
		return ip.Unmap()
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(v.IP)
		return ip.Unmap()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}
