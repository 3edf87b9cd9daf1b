package whip

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// maxSources bounds the per-source table: sources past it share one bucket instead of growing
// the table.
const maxSources = 1 << 16

// postLimits is a token bucket of POSTs per source address.
type postLimits struct {
	rate     rate.Limit // 0: not limited
	burst    int
	mu       sync.Mutex
	buckets  map[netip.Addr]*rate.Limiter
	overflow *rate.Limiter
	swept    time.Time
}

func newPostLimits(perSecond float64, burst int) *postLimits {
	return &postLimits{rate: rate.Limit(perSecond), burst: burst, buckets: map[netip.Addr]*rate.Limiter{},
		overflow: rate.NewLimiter(rate.Limit(perSecond), burst)}
}

// allow takes a token from the bucket of the request's remote address (host:port).
func (l *postLimits) allow(remote string, now time.Time) bool {
	if l.rate <= 0 {
		return true
	}
	var src netip.Addr
	if host, _, err := net.SplitHostPort(remote); err == nil {
		src, _ = netip.ParseAddr(host)
	}
	src = src.Unmap()
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
