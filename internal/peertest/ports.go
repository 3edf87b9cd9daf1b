package peertest

import (
	"math/rand/v2"
	"net"
	"testing"
)

// Ports for processes a test starts that bind them themselves (SIPp, baresip, nats-server,
// Prometheus, the services): the port is only checked, not held, so something else can take it
// before the process binds it. An outgoing connection of another test is the usual culprit, and
// the kernel gives those ports from its ephemeral range (32768 and up by default), so these come
// from below it, between the in-process SIP load test's RTP ports (10000 up, 2,000 of them for a
// test-sized run) and the SIP tests' ingest RTP ranges (20000 up).
const (
	portLow  = 12400
	portHigh = 19600
)

// Ports returns the first of n consecutive ports on 127.0.0.1, each free for both TCP and UDP a
// moment ago, between 12400 and 19600; the first is even (RTP's convention, which SIPp keeps). A process that still finds one taken should be started
// again on new ones (see the SIPp and baresip harnesses).
func Ports(t testing.TB, n int) int {
	t.Helper()
	for range 200 {
		p := portLow + 2*rand.IntN((portHigh-portLow-n)/2)
		if free(p, n) {
			return p
		}
	}
	t.Fatalf("no %d consecutive free ports between %d and %d", n, portLow, portHigh)
	return 0
}

// Port returns one port on 127.0.0.1, free for both TCP and UDP a moment ago; see Ports.
func Port(t testing.TB) int {
	t.Helper()
	return Ports(t, 1)
}

func free(first, n int) bool {
	for p := first; p < first+n; p++ {
		a := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: p}
		u, err := net.ListenUDP("udp", a)
		if err != nil {
			return false
		}
		u.Close()
		l, err := net.ListenTCP("tcp", (*net.TCPAddr)(a))
		if err != nil {
			return false
		}
		l.Close()
	}
	return true
}
