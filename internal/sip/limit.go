package sip

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// maxSources bounds the per-source table of the limits: sources past it (a flood from forged
// addresses) share one bucket and one connection count instead of growing the table.
const maxSources = 1 << 16

// sourceLimits holds the per-source bounds the transport guards apply before sipgo sees a
// message: a token bucket of new INVITEs per source address, and the open TCP connections per
// source address and in all.
type sourceLimits struct {
	rate         rate.Limit // 0: INVITEs are not limited
	burst        int
	perSource    int // TCP connections per source (0: no bound)
	total        int // TCP connections in all (0: no bound)
	mu           sync.Mutex
	buckets      map[netip.Addr]*rate.Limiter
	overflow     *rate.Limiter // the bucket of sources past maxSources
	swept        time.Time
	conns        map[netip.Addr]int
	open         int
	overflowConn netip.Addr // the key of sources past maxSources in conns
}

func newSourceLimits(cfg *Config) *sourceLimits {
	l := &sourceLimits{rate: rate.Limit(cfg.InviteRate), burst: cfg.InviteBurst, perSource: cfg.TCPConnsPerSource,
		total: cfg.MaxTCPConns, buckets: map[netip.Addr]*rate.Limiter{}, conns: map[netip.Addr]int{},
		overflowConn: netip.IPv6Unspecified()}
	l.overflow = rate.NewLimiter(l.rate, l.burst)
	return l
}

// allowInvite takes a token from src's INVITE bucket and reports whether there was one. A nil
// sourceLimits allows everything.
func (l *sourceLimits) allowInvite(src netip.Addr, now time.Time) bool {
	if l == nil || l.rate <= 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[src]
	if b == nil {
		if len(l.buckets) >= maxSources && now.Sub(l.swept) > time.Second {
			l.swept = now
			for a, lim := range l.buckets { // full buckets hold nothing a new one would not
				if lim.TokensAt(now) >= float64(l.burst) {
					delete(l.buckets, a)
				}
			}
		}
		if len(l.buckets) >= maxSources {
			b = l.overflow
		} else {
			b = rate.NewLimiter(l.rate, l.burst)
			l.buckets[src] = b
		}
	}
	return b.AllowN(now, 1)
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
