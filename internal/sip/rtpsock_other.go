//go:build !linux

package sip

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"time"
)

// rtpConn is one RTP socket, read by its stream's own goroutine through Go's network poller
// (Linux has rtpsock_linux.go, which reads many sockets from one goroutine).
type rtpConn struct {
	*net.UDPConn
	port int
}

// rtpPollers has nothing to share outside Linux.
type rtpPollers struct{}

func newRTPPollers() *rtpPollers { return nil }

func listenRTP(ip netip.Addr, port int, _ *rtpPollers) (*rtpConn, error) {
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, uint16(port))))
	if err != nil {
		return nil, err
	}
	_ = c.SetReadBuffer(256 << 10)
	return &rtpConn{UDPConn: c, port: port}, nil
}

// serve reads packets into s until the socket is closed.
func (c *rtpConn) serve(s *stream) {
	for {
		_ = c.SetReadDeadline(time.Now().Add(frameDur))
		n, from, err := c.ReadFromUDPAddrPort(s.buf[:])
		now := time.Now()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				s.idle(now)
				continue
			}
			return // closed
		}
		s.handle(now, from, s.buf[:n])
		s.idle(now) // a flood of rejected packets must not hold off silence filling
	}
}
