//go:build !linux

package whip

import (
	"errors"
	"net"
	"net/netip"

	"github.com/pion/stun/v4"
)

// readLoop reads the shared socket until it is closed, one datagram at a time.
func (s *Server) readLoop() {
	defer close(s.readDone)
	buf := make([]byte, 1500)
	var m stun.Message
	for {
		n, from, err := s.udp.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		s.datagram(buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), &m)
	}
}
