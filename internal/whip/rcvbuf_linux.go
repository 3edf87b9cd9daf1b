package whip

import (
	"net"
	"syscall"
)

// setRcvBuf sets the shared socket's receive buffer to n bytes, past net.core.rmem_max when the
// process may (CAP_NET_ADMIN), else as much as the host allows.
func setRcvBuf(c *net.UDPConn, n int) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		if syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, n) != nil {
			_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, n)
		}
	})
}
