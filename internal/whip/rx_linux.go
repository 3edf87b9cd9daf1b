package whip

import (
	"net/netip"
	"time"
	"unsafe"

	"github.com/pion/stun/v4"
	"golang.org/x/sys/unix"
)

// The read loop takes the shared socket's datagrams in batches, as the SIP ingest's shared RTP
// port does (internal/sip/shared_linux.go): once woken by Go's network poller it takes up to
// readBatch queued datagrams per recvmmsg until the socket is empty, and when a batch was not
// full it sleeps readCoalesce before looking again, so that a busy socket costs one wake-up per
// readCoalesce instead of one per packet (and ingest's NATS flusher is kicked once per batch).
// Idle, it waits in the poller. A packet waits at most readCoalesce more.
const (
	readBatch    = 64
	readCoalesce = time.Millisecond
)

// readLoop reads the shared socket until it is closed.
func (s *Server) readLoop() {
	defer close(s.readDone)
	rc, err := s.udp.SyscallConn()
	if err != nil {
		return
	}
	var (
		bufs  [readBatch][1500]byte
		names [readBatch]unix.RawSockaddrInet6
		iovs  [readBatch]unix.Iovec
		hdrs  [readBatch]unix.Mmsghdr
		m     stun.Message
	)
	for k := range hdrs {
		iovs[k].Base = &bufs[k][0]
		iovs[k].SetLen(len(bufs[k]))
		hdrs[k].Hdr.Iov = &iovs[k]
		hdrs[k].Hdr.SetIovlen(1)
		hdrs[k].Hdr.Name = (*byte)(unsafe.Pointer(&names[k]))
	}
	got := 0
	// recv takes one batch; false (the socket is empty) parks the loop in the poller.
	recv := func(fd uintptr) bool {
		for k := range hdrs {
			hdrs[k].Hdr.Namelen = unix.SizeofSockaddrInet6
		}
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&hdrs[0])), readBatch, unix.MSG_DONTWAIT, 0, 0)
		if errno == unix.EAGAIN {
			return false
		}
		if errno != 0 {
			return true // an ICMP error queued on the socket, consumed by this read
		}
		got = int(n)
		for k := range got {
			if from, ok := sockaddrAddrPort(&names[k]); ok {
				s.datagram(bufs[k][:hdrs[k].Len], from, &m)
			}
		}
		return true
	}
	for {
		if rc.Read(recv) != nil {
			return // closed
		}
		if got < readBatch {
			time.Sleep(readCoalesce)
		}
		got = 0
	}
}

// sockaddrAddrPort decodes an AF_INET or AF_INET6 address written by the kernel (IPv4 unmapped).
func sockaddrAddrPort(sa *unix.RawSockaddrInet6) (netip.AddrPort, bool) {
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
