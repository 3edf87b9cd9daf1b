//go:build linux

package sip

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The shared port's sockets: one per reader, all bound to the port with SO_REUSEPORT so that
// the kernel spreads the sources over them (one source always to the same socket). Each reader
// is a goroutine in a blocking recvmmsg that returns as soon as one packet is there and takes
// up to sharedBatch queued ones with it, or after a frame time without any, for the sweep.

const (
	sharedBatch  = 64
	sharedRcvBuf = 8 << 20 // many streams queue on one socket: more than the per-port 256 KiB
)

type sharedSocks struct {
	fds     []int
	closing atomic.Bool
	wg      sync.WaitGroup
}

// openSharedRTP binds readers sockets on ip:port and starts their readers.
func openSharedRTP(ip netip.Addr, port, readers int, m *metrics) (*sharedRTP, error) {
	r := newSharedRTP(port, readers, m)
	for range readers {
		fd, err := bindShared(ip, port)
		if err != nil {
			r.close()
			return nil, err
		}
		r.socks.fds = append(r.socks.fds, fd)
	}
	for i, fd := range r.socks.fds {
		r.socks.wg.Go(func() { r.read(i, fd) })
	}
	return r, nil
}

func bindShared(ip netip.Addr, port int) (int, error) {
	family := unix.AF_INET6
	if ip.Is4() || ip.Is4In6() {
		family = unix.AF_INET
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	var sa unix.Sockaddr = &unix.SockaddrInet4{Port: port, Addr: ip.Unmap().As4()}
	if family == unix.AF_INET6 {
		if ip.IsUnspecified() {
			_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
		}
		sa = &unix.SockaddrInet6{Port: port, Addr: ip.As16()}
	}
	tv := unix.NsecToTimeval(int64(frameDur))
	for _, err := range []error{
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1),
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv),
		unix.Bind(fd, sa),
	} {
		if err != nil {
			_ = unix.Close(fd)
			return -1, err
		}
	}
	// Past net.core.rmem_max only with CAP_NET_ADMIN; else as much as the host allows.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, sharedRcvBuf) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, sharedRcvBuf)
	}
	return fd, nil
}

// close stops the readers and closes the sockets; the table's streams are closed by their calls.
func (r *sharedRTP) close() {
	r.socks.closing.Store(true)
	for _, fd := range r.socks.fds {
		_ = unix.Shutdown(fd, unix.SHUT_RD) // wakes a reader in recvmmsg
	}
	r.socks.wg.Wait()
	for _, fd := range r.socks.fds {
		_ = unix.Close(fd)
	}
	r.socks.fds = nil
}

// read is reader i's loop on fd: batches of datagrams into the table, and the sweep of its
// streams every frame time.
func (r *sharedRTP) read(i, fd int) {
	var (
		bufs  [sharedBatch][maxPacket + 64]byte
		names [sharedBatch]unix.RawSockaddrInet6
		iovs  [sharedBatch]unix.Iovec
		hdrs  [sharedBatch]unix.Mmsghdr
	)
	for k := range hdrs {
		iovs[k].Base = &bufs[k][0]
		iovs[k].SetLen(len(bufs[k]))
		hdrs[k].Hdr.Iov = &iovs[k]
		hdrs[k].Hdr.SetIovlen(1)
		hdrs[k].Hdr.Name = (*byte)(unsafe.Pointer(&names[k]))
	}
	nextSweep := time.Now().Add(frameDur)
	for !r.socks.closing.Load() {
		for k := range hdrs {
			hdrs[k].Hdr.Namelen = unix.SizeofSockaddrInet6
		}
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&hdrs[0])), sharedBatch,
			unix.MSG_WAITFORONE, 0, 0)
		now := time.Now()
		// EAGAIN after a frame time without packets; an ICMP error queued on the socket is
		// consumed by the read that reports it.
		if errno != 0 {
			n = 0
		}
		for k := range int(n) {
			if from, ok := sockaddrPort(&names[k]); ok {
				r.deliver(now, from, bufs[k][:hdrs[k].Len])
			}
		}
		if !now.Before(nextSweep) {
			r.sweep(i, now)
			nextSweep = now.Add(frameDur)
		}
	}
}

// sockaddrPort decodes an AF_INET or AF_INET6 address written by the kernel.
func sockaddrPort(sa *unix.RawSockaddrInet6) (netip.AddrPort, bool) {
	pb := (*[2]byte)(unsafe.Pointer(&sa.Port))
	port := uint16(pb[0])<<8 | uint16(pb[1])
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port), true
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port), true
	}
	return netip.AddrPort{}, false
}
