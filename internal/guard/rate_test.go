package guard

import (
	"net/netip"
	"testing"
	"time"
)

func TestSourceRate(t *testing.T) {
	l := NewSourceRate(10, 3)
	now := time.Unix(1000, 0)
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("::ffff:192.0.2.2")
	for i := 0; i < 3; i++ {
		if !l.Allow(a, now) {
			t.Fatalf("token %d of the burst refused", i)
		}
	}
	if l.Allow(a, now) {
		t.Error("a fourth at once was allowed past a burst of 3")
	}
	if !l.Allow(b, now) {
		t.Error("another source was refused while one is at its bound")
	}
	if !l.Allow(a, now.Add(100*time.Millisecond)) {
		t.Error("a token did not come back after 1/rate")
	}
	if !l.Allow(netip.MustParseAddr("192.0.2.2"), now) || !l.Allow(b, now) {
		t.Error("an IPv4-mapped address and its IPv4 form should share a bucket with tokens left")
	}
	if l.Allow(netip.MustParseAddr("192.0.2.2"), now) {
		t.Error("the mapped and plain forms of one address have separate buckets")
	}
	var none *SourceRate
	if !none.Allow(a, now) || !NewSourceRate(0, 0).Allow(a, now) {
		t.Error("a nil or zero-rate SourceRate must allow everything")
	}
}

func TestSourceRateTableIsBounded(t *testing.T) {
	l := NewSourceRate(1, 1)
	now := time.Unix(1000, 0)
	for i := 0; i < maxSources+100; i++ {
		l.Allow(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), now)
	}
	if n := len(l.buckets); n > maxSources {
		t.Errorf("%d buckets, want at most %d", n, maxSources)
	}
}
