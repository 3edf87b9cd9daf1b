//go:build linux

package sip

import (
	"errors"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// On Linux the RTP sockets stay outside Go's network poller: a few poller goroutines (one per
// core) each wait on an epoll set of many sockets and read every ready socket once per wake-up.
// Go's poller would take, per packet, a goroutine wake-up, a second read that finds the socket
// empty, and a read-deadline timer reset; here a packet costs one recvfrom, and silence filling
// runs for all of a poller's streams from one 20 ms sweep instead of a timer per stream. (Batch
// reads with recvmmsg would not help: each socket carries one stream, so a wake-up finds one
// packet on it; the shared port, shared_linux.go, carries many.) BenchmarkStreamReceive
// measures them all.

// rtpConn is one RTP socket: non-blocking UDP, read by a poller of its pool once a stream
// serves on it.
type rtpConn struct {
	fd    int
	port  int
	ip    netip.Addr
	pools *rtpPollers

	mu     sync.Mutex
	state  int // connIdle, connServed, connClosed
	poller *rtpPoller
}

const (
	connIdle = iota
	connServed
	connClosed
)

// listenRTP binds a UDP socket on ip:port the way net.ListenUDP would: a wildcard address takes
// IPv4 and IPv6 on one dual-stack socket, or IPv4 alone where the host has no IPv6.
func listenRTP(ip netip.Addr, port int, pools *rtpPollers) (*rtpConn, error) {
	if ip.IsUnspecified() {
		c, err := listenFamily(syscall.AF_INET6, ip, port, pools)
		if err == nil || errors.Is(err, syscall.EADDRINUSE) {
			return c, err
		}
		return listenFamily(syscall.AF_INET, netip.IPv4Unspecified(), port, pools)
	}
	if ip.Is4() || ip.Is4In6() {
		return listenFamily(syscall.AF_INET, ip, port, pools)
	}
	return listenFamily(syscall.AF_INET6, ip, port, pools)
}

func listenFamily(family int, ip netip.Addr, port int, pools *rtpPollers) (*rtpConn, error) {
	fd, err := syscall.Socket(family, syscall.SOCK_DGRAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	var sa syscall.Sockaddr
	if family == syscall.AF_INET {
		sa = &syscall.SockaddrInet4{Port: port, Addr: ip.Unmap().As4()}
	} else {
		if ip.IsUnspecified() {
			_ = syscall.SetsockoptInt(fd, syscall.IPPROTO_IPV6, syscall.IPV6_V6ONLY, 0)
			ip = netip.IPv6Unspecified()
		}
		sa = &syscall.SockaddrInet6{Port: port, Addr: ip.As16()}
	}
	if err := syscall.Bind(fd, sa); err != nil {
		_ = syscall.Close(fd)
		return nil, err
	}
	_ = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUF, 256<<10)
	return &rtpConn{fd: fd, port: port, ip: ip, pools: pools}, nil
}

// LocalAddr returns the bound address.
func (c *rtpConn) LocalAddr() net.Addr {
	return net.UDPAddrFromAddrPort(netip.AddrPortFrom(c.ip, uint16(c.port)))
}

// Close stops the socket's stream (its serve returns once the poller has let go of it) and
// closes the socket. It may be called more than once.
func (c *rtpConn) Close() error {
	c.mu.Lock()
	if c.state == connClosed {
		c.mu.Unlock()
		return nil
	}
	served := c.state == connServed
	c.state = connClosed
	var ack chan struct{}
	if served {
		ack = c.poller.do(pollOp{remove: true, fd: c.fd})
	}
	c.mu.Unlock()
	if ack != nil {
		<-ack
	}
	return syscall.Close(c.fd)
}

// serve reads packets into s (s.handle, then silence filling) until Close; it returns at once
// if the socket is already closed. A panic in s's packet handling ends s alone and is raised
// again here, on s's own goroutine.
func (c *rtpConn) serve(s *stream) {
	s.done = make(chan struct{})
	c.mu.Lock()
	if c.state != connIdle {
		c.mu.Unlock()
		return
	}
	c.state = connServed
	c.poller = c.pools.pick()
	ack := c.poller.do(pollOp{fd: c.fd, s: s})
	c.mu.Unlock()
	<-ack
	<-s.done
	if p := s.panicked.Load(); p != nil {
		panic(*p)
	}
}

// rtpPollers is a port pool's set of pollers, one per core.
type rtpPollers struct {
	ps   []rtpPoller
	next atomic.Uint32
}

func newRTPPollers() *rtpPollers {
	return &rtpPollers{ps: make([]rtpPoller, runtime.GOMAXPROCS(0))}
}

func (r *rtpPollers) pick() *rtpPoller {
	return &r.ps[int(r.next.Add(1))%len(r.ps)]
}

// rtpPoller reads the sockets of many streams from one goroutine, which runs while it has
// streams (or requests) and exits when it has none.
type rtpPoller struct {
	mu      sync.Mutex
	ops     []pollOp
	running bool
	wake    [2]int // pipe: a byte on it wakes the goroutine for ops
	epfd    int
}

// pollOp adds stream s on fd, or removes fd's stream; ack is closed once done.
type pollOp struct {
	remove bool
	fd     int
	s      *stream
	ack    chan struct{}
}

// do queues op and returns the channel closed when the poller has carried it out; it starts the
// goroutine when it is not running. Callers may hold their rtpConn's mu.
func (p *rtpPoller) do(op pollOp) chan struct{} {
	op.ack = make(chan struct{})
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.running {
		if err := p.open(); err != nil {
			// No epoll set (out of descriptors): the stream ends at once, as on a closed socket.
			if op.s != nil {
				close(op.s.done)
			}
			close(op.ack)
			return op.ack
		}
		p.running = true
		go p.loop()
	}
	p.ops = append(p.ops, op)
	_, _ = syscall.Write(p.wake[1], []byte{0})
	return op.ack
}

func (p *rtpPoller) open() error {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	if err := syscall.Pipe2(p.wake[:], syscall.O_NONBLOCK|syscall.O_CLOEXEC); err != nil {
		_ = syscall.Close(epfd)
		return err
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(p.wake[0])}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, p.wake[0], &ev); err != nil {
		_ = syscall.Close(epfd)
		_ = syscall.Close(p.wake[0])
		_ = syscall.Close(p.wake[1])
		return err
	}
	p.epfd = epfd
	return nil
}

// loop waits for packets (level-triggered: a socket with more than one packet queued is
// reported again), and sweeps every stream's silence filling each frame time.
func (p *rtpPoller) loop() {
	streams := map[int32]*stream{}
	events := make([]syscall.EpollEvent, 256)
	var rsa syscall.RawSockaddrAny
	var drain [64]byte
	nextSweep := time.Now().Add(frameDur)
	for {
		ms := int((time.Until(nextSweep) + time.Millisecond - 1) / time.Millisecond)
		n, err := syscall.EpollWait(p.epfd, events, max(ms, 0))
		if err != nil && !errors.Is(err, syscall.EINTR) {
			n = 0 // not expected from a valid set; the sweep and ops still run
		}
		now := time.Now()
		ops := false
		for _, ev := range events[:max(n, 0)] {
			if int(ev.Fd) == p.wake[0] {
				for {
					if k, _ := syscall.Read(p.wake[0], drain[:]); k <= 0 {
						break
					}
				}
				ops = true
				continue
			}
			if s := streams[ev.Fd]; s != nil {
				p.read(streams, s, int(ev.Fd), now, &rsa)
			}
		}
		if !now.Before(nextSweep) {
			mono := monoNanos(now)
			for fd, s := range streams {
				if mono >= s.idleDue.Load() {
					p.idle(streams, fd, s, now)
				}
			}
			nextSweep = now.Add(frameDur)
		}
		if ops && p.apply(streams) {
			return
		}
	}
}

// read takes one datagram off fd into s.
func (p *rtpPoller) read(streams map[int32]*stream, s *stream, fd int, now time.Time, rsa *syscall.RawSockaddrAny) {
	l := uint32(syscall.SizeofSockaddrAny)
	r, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&s.buf[0])), uintptr(len(s.buf)),
		0, uintptr(unsafe.Pointer(rsa)), uintptr(unsafe.Pointer(&l)))
	if e != 0 {
		return // EAGAIN (reported, then read away), or an ICMP error queued on the socket
	}
	var from netip.AddrPort
	switch rsa.Addr.Family {
	case syscall.AF_INET:
		sa := (*syscall.RawSockaddrInet4)(unsafe.Pointer(rsa))
		pb := (*[2]byte)(unsafe.Pointer(&sa.Port))
		from = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(pb[0])<<8|uint16(pb[1]))
	case syscall.AF_INET6:
		sa := (*syscall.RawSockaddrInet6)(unsafe.Pointer(rsa))
		pb := (*[2]byte)(unsafe.Pointer(&sa.Port))
		from = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(pb[0])<<8|uint16(pb[1]))
	}
	defer p.recover(streams, int32(fd), s)
	s.handle(now, from, s.buf[:r])
}

// idle runs s's silence filling.
func (p *rtpPoller) idle(streams map[int32]*stream, fd int32, s *stream, now time.Time) {
	defer p.recover(streams, fd, s)
	s.idle(now)
}

// recover, deferred, turns a panic in s's handling into the end of s alone (its serve raises it
// again on s's goroutine) and spares the poller's other streams.
func (p *rtpPoller) recover(streams map[int32]*stream, fd int32, s *stream) {
	if v := recover(); v != nil {
		p.fail(streams, fd, s, v)
	}
}

func (p *rtpPoller) fail(streams map[int32]*stream, fd int32, s *stream, v any) {
	s.panicked.Store(&v)
	p.drop(streams, fd, s)
}

func (p *rtpPoller) drop(streams map[int32]*stream, fd int32, s *stream) {
	if streams[fd] != s {
		return
	}
	_ = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil)
	delete(streams, fd)
	close(s.done)
}

// apply carries out the queued ops; it reports true, having closed the poller's descriptors,
// when no stream and no op is left, so that the goroutine exits.
func (p *rtpPoller) apply(streams map[int32]*stream) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, op := range p.ops {
		fd := int32(op.fd)
		if op.remove {
			if s := streams[fd]; s != nil {
				p.drop(streams, fd, s)
			}
		} else {
			ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: fd}
			if err := syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, op.fd, &ev); err != nil {
				close(op.s.done)
			} else {
				streams[fd] = op.s
			}
		}
		close(op.ack)
	}
	clear(p.ops)
	p.ops = p.ops[:0]
	if len(streams) > 0 {
		return false
	}
	p.running = false
	_ = syscall.Close(p.epfd)
	_ = syscall.Close(p.wake[0])
	_ = syscall.Close(p.wake[1])
	return true
}
