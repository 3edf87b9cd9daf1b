//go:build linux

package mmsg

import (
	"bytes"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"
)

// recvAll reads conn's queued datagrams with b until it has want of them or the deadline passes.
func recvAll(t *testing.T, conn *net.UDPConn, b *Batch, want int) (ps [][]byte, froms []netip.AddrPort, batches []int) {
	t.Helper()
	rc, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(ps) < want && time.Now().Before(deadline) {
		_ = conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		_ = rc.Read(func(fd uintptr) bool {
			n, more := b.Recv(fd)
			if !more {
				return false
			}
			batches = append(batches, n)
			for k := range n {
				p, from, ok := b.Datagram(k)
				if !ok {
					t.Errorf("datagram %d: no address", k)
				}
				ps, froms = append(ps, bytes.Clone(p)), append(froms, from)
			}
			return true
		})
	}
	return ps, froms, batches
}

// TestBatchTakesQueuedDatagramsWithTheirSources: datagrams queued on a socket from two senders
// come out in order, in batches of at most Len, with their payloads and the senders' addresses,
// on IPv4 and on IPv6 loopback; a datagram longer than the buffers is cut.
func TestBatchTakesQueuedDatagramsWithTheirSources(t *testing.T) {
	for _, network := range []string{"udp4", "udp6"} {
		t.Run(network, func(t *testing.T) {
			laddr := "127.0.0.1:0"
			if network == "udp6" {
				laddr = "[::1]:0"
			}
			conn, err := net.ListenUDP(network, mustResolve(t, network, laddr))
			if err != nil && network == "udp6" {
				t.Skipf("no IPv6 loopback here: %v", err)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			dst := conn.LocalAddr().(*net.UDPAddr)
			senders := make([]*net.UDPConn, 2)
			for i := range senders {
				if senders[i], err = net.DialUDP(network, nil, dst); err != nil {
					t.Fatal(err)
				}
				defer senders[i].Close()
			}
			const n = 20
			for i := range n {
				p := []byte("datagram " + strconv.Itoa(i))
				if i == n-1 {
					p = bytes.Repeat([]byte{'x'}, 100) // longer than the buffers
				}
				if _, err := senders[i%2].Write(p); err != nil {
					t.Fatal(err)
				}
			}
			b := New(8, 64)
			ps, froms, batches := recvAll(t, conn, b, n)
			if len(ps) != n {
				t.Fatalf("got %d datagrams, want %d", len(ps), n)
			}
			for _, k := range batches {
				if k < 1 || k > b.Len() {
					t.Errorf("a batch of %d, want 1..%d", k, b.Len())
				}
			}
			for i, p := range ps {
				want := "datagram " + strconv.Itoa(i)
				if i == n-1 {
					want = string(bytes.Repeat([]byte{'x'}, 64))
				}
				if string(p) != want {
					t.Errorf("datagram %d is %q, want %q", i, p, want)
				}
				src := senders[i%2].LocalAddr().(*net.UDPAddr).AddrPort()
				if froms[i] != src {
					t.Errorf("datagram %d from %v, want %v", i, froms[i], src)
				}
			}
		})
	}
}

// TestRecvOnAnEmptySocket: an empty socket reports false (park in the poller) and no datagram.
func TestRecvOnAnEmptySocket(t *testing.T) {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rc, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var more bool
	if err := rc.Control(func(fd uintptr) { n, more = New(4, 16).Recv(fd) }); err != nil {
		t.Fatal(err)
	}
	if n != 0 || more {
		t.Errorf("Recv on an empty socket = %d, %v, want 0, false", n, more)
	}
}

func mustResolve(t *testing.T, network, addr string) *net.UDPAddr {
	t.Helper()
	a, err := net.ResolveUDPAddr(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
