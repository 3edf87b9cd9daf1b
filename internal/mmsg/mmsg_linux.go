//go:build linux

package mmsg

import (
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Batch holds the buffers of up to n datagrams of at most size bytes and the kernel's headers
// for them, set up once; one reader goroutine uses it.
type Batch struct {
	size  int
	bufs  []byte // n buffers of size bytes, back to back
	names []unix.RawSockaddrInet6
	iovs  []unix.Iovec
	hdrs  []unix.Mmsghdr
}

// New returns a batch of n datagrams of at most size bytes each (a longer one is cut to size).
func New(n, size int) *Batch {
	b := &Batch{size: size, bufs: make([]byte, n*size), names: make([]unix.RawSockaddrInet6, n),
		iovs: make([]unix.Iovec, n), hdrs: make([]unix.Mmsghdr, n)}
	for k := range b.hdrs {
		b.iovs[k].Base = &b.bufs[k*size]
		b.iovs[k].SetLen(size)
		b.hdrs[k].Hdr.Iov = &b.iovs[k]
		b.hdrs[k].Hdr.SetIovlen(1)
		b.hdrs[k].Hdr.Name = (*byte)(unsafe.Pointer(&b.names[k]))
	}
	return b
}

// Len is how many datagrams a batch holds at most.
func (b *Batch) Len() int { return len(b.hdrs) }

// Recv takes the datagrams queued on the socket fd, up to Len, without blocking (for a
// syscall.RawConn's Read, whose false return parks the reader in Go's network poller). It returns
// how many it took, and false when the socket was empty. An error the kernel queued on the socket
// (an ICMP unreachable for an earlier send) is consumed by the call and reported as 0, true.
func (b *Batch) Recv(fd uintptr) (int, bool) {
	for k := range b.hdrs {
		b.hdrs[k].Hdr.Namelen = unix.SizeofSockaddrInet6
	}
	// Raw: the call never blocks (MSG_DONTWAIT), so the scheduler need not hear of it.
	n, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(len(b.hdrs)), unix.MSG_DONTWAIT, 0, 0)
	switch errno {
	case 0:
		return int(n), true
	case unix.EAGAIN:
		return 0, false
	}
	return 0, true
}

// Datagram returns the k-th datagram of the last Recv (valid until the next) and where it came
// from (an IPv4 source unmapped); ok is false for an address of another family.
func (b *Batch) Datagram(k int) (p []byte, from netip.AddrPort, ok bool) {
	from, ok = addrPort(&b.names[k])
	off := k * b.size
	return b.bufs[off : off+min(int(b.hdrs[k].Len), b.size)], from, ok
}

// addrPort decodes an AF_INET or AF_INET6 address written by the kernel.
func addrPort(sa *unix.RawSockaddrInet6) (netip.AddrPort, bool) {
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
