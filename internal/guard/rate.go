package guard

import (
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// maxSources bounds a SourceRate's table: sources past it (a flood from forged addresses) share
// one bucket instead of growing the table.
const maxSources = 1 << 16

// SourceRate is a token bucket per source address: what a listener (SIP INVITEs, WHIP POSTs)
// lets one peer start per second. A nil SourceRate, or one with a rate of 0, allows everything.
type SourceRate struct {
	rate     rate.Limit
	burst    int
	mu       sync.Mutex
	buckets  map[netip.Addr]*rate.Limiter
	overflow *rate.Limiter // the bucket of sources past maxSources
	swept    time.Time
}

// NewSourceRate returns buckets of perSecond tokens a second, burst at most (0: no bound).
func NewSourceRate(perSecond float64, burst int) *SourceRate {
	return &SourceRate{rate: rate.Limit(perSecond), burst: burst, buckets: map[netip.Addr]*rate.Limiter{},
		overflow: rate.NewLimiter(rate.Limit(perSecond), burst)}
}

// Allow takes a token from src's bucket at now and reports whether there was one.
func (l *SourceRate) Allow(src netip.Addr, now time.Time) bool {
	if l == nil || l.rate <= 0 {
		return true
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
