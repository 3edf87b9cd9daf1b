//go:build !linux

package whip

import "net"

// setRcvBuf sets the shared socket's receive buffer to n bytes, as much as the host allows.
func setRcvBuf(c *net.UDPConn, n int) { _ = c.SetReadBuffer(n) }
