//go:build linux

package sip

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/callrouter/callrouter/internal/mmsg"
	"golang.org/x/sys/unix"
)

// The shared port's sockets: one per reader, all bound to the port with SO_REUSEPORT so that
// the kernel spreads the sources over them (one source always to the same socket). Each reader
// is a goroutine that waits in Go's network poller and, once woken, takes up to sharedBatch
// queued packets per recvmmsg until the socket is empty; a read deadline each frame time wakes
// it for the sweep. (A reader blocked in the system call instead keeps the runtime's sysmon
// polling every 20 µs to retake its P: a quarter of the ingest's CPU in the profile.)

const (
	sharedBatch    = 64
	sharedCoalesce = time.Millisecond
	sharedRcvBuf   = 8 << 20 // many streams queue on one socket: more than the per-port 256 KiB
)

type sharedSocks struct {
	conns []*net.UDPConn
	wg    sync.WaitGroup
}

// openSharedRTP binds readers sockets on ip:port and starts their readers.
func openSharedRTP(ip netip.Addr, port, readers int, m *metrics) (*sharedRTP, error) {
	r := newSharedRTP(port, readers, m)
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		cerr := c.Control(func(fd uintptr) {
			if err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
				return
			}
			// Past net.core.rmem_max only with CAP_NET_ADMIN; else as much as the host allows.
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, sharedRcvBuf) != nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, sharedRcvBuf)
			}
			if n, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF); err == nil {
				r.rcvbuf = n / 2 // Linux reports twice what was set (its bookkeeping overhead)
			}
		})
		return errors.Join(cerr, err)
	}}
	network := "udp" // a wildcard address: IPv4 and IPv6 on one dual-stack socket
	if ip.Is4() || ip.Is4In6() {
		network = "udp4"
	} else if !ip.IsUnspecified() {
		network = "udp6"
	}
	addr := netip.AddrPortFrom(ip.Unmap(), uint16(port)).String()
	// SO_REUSEPORT would let another process of the same user (a second ingest given the same
	// range) share the port and silently take part of its packets: a plain bind first makes
	// sure nobody holds it.
	probe, err := net.ListenPacket(network, addr)
	if err != nil {
		return nil, err
	}
	_ = probe.Close()
	for range readers {
		pc, err := lc.ListenPacket(context.Background(), network, addr)
		if err != nil {
			r.close()
			return nil, err
		}
		r.socks.conns = append(r.socks.conns, pc.(*net.UDPConn))
	}
	for i, c := range r.socks.conns {
		rc, err := c.SyscallConn()
		if err != nil {
			r.close()
			return nil, err
		}
		r.socks.wg.Go(func() { r.read(i, c, rc) })
	}
	return r, nil
}

// close stops the readers and closes the sockets; the table's streams are closed by their calls.
func (r *sharedRTP) close() {
	for _, c := range r.socks.conns {
		_ = c.Close()
	}
	r.socks.wg.Wait()
	r.socks.conns = nil
}

// read is reader i's loop on c: batches of datagrams into the table, and the sweep of its
// streams every frame time; it returns once c is closed.
func (r *sharedRTP) read(i int, c *net.UDPConn, rc syscall.RawConn) {
	batch := mmsg.New(sharedBatch, maxPacket+64)
	// recv takes one batch; false (the socket is empty) parks the reader in the poller.
	got := 0
	recv := func(fd uintptr) bool {
		n, more := batch.Recv(fd)
		if !more {
			return false
		}
		now := time.Now()
		got = n
		for k := range n {
			if p, from, ok := batch.Datagram(k); ok {
				r.deliver(now, from, p)
			}
		}
		return true
	}
	nextSweep := time.Now().Add(frameDur)
	_ = c.SetReadDeadline(nextSweep)
	for {
		err := rc.Read(recv)
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return // closed
		}
		if now := time.Now(); !now.Before(nextSweep) {
			r.sweep(i, now)
			nextSweep = now.Add(frameDur)
			_ = c.SetReadDeadline(nextSweep)
		}
		if err == nil && got < sharedBatch {
			// The socket is (nearly) empty: let packets gather for a while rather than wake for
			// each one. Idle, the reader waits in the poller; busy, it wakes at most once per
			// sharedCoalesce and takes what came meanwhile in one batch.
			time.Sleep(sharedCoalesce)
		}
		got = 0
	}
}
