package sip

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/prometheus/client_golang/prometheus"
)

// threadCPU returns the CPU time of the calling OS thread (lock it first).
func threadCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(1 /* RUSAGE_THREAD */, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// goPollRead is the read loop SIP streams had before rtpsock_linux.go, kept here as the
// benchmark's baseline: a goroutine per socket through Go's network poller, a read deadline
// per packet for silence filling.
func goPollRead(c *net.UDPConn, s *stream) {
	for {
		_ = c.SetReadDeadline(time.Now().Add(frameDur))
		n, from, err := c.ReadFromUDPAddrPort(s.buf[:])
		now := time.Now()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				s.cut.idle(now)
				continue
			}
			return
		}
		s.handle(now, from, s.buf[:n])
		s.cut.idle(now)
	}
}

// BenchmarkStreamReceive is the whole RTP receive path of a SIP ingest at a realistic packet
// rate: 1,000 streams, each sent a 20 ms G.711 packet every 20 ms from its own loopback source
// socket by one pacing sender, through the socket reader, the cutter and the frame callback (the
// publish itself is the ingest core's). It reports the receive side's CPU per packet and per
// two-leg call (two streams) and second: the process's CPU time without the sender's thread,
// which other work on a shared machine disturbs less than wall time. Each op is one 20 ms round
// of 1,000 packets. "epoll" is the reader streams on their own ports use (rtpsock_linux.go on
// Linux), "gopoll" the goroutine per socket it replaced, "shared" the shared port
// (-sip-rtp-shared: recvmmsg readers, routing by source and SSRC); run them in one go to
// compare on a shared machine.
func BenchmarkStreamReceive(b *testing.B) {
	b.Run("epoll", func(b *testing.B) { benchReceive(b, "epoll") })
	b.Run("gopoll", func(b *testing.B) { benchReceive(b, "gopoll") })
	b.Run("shared", func(b *testing.B) { benchReceive(b, "shared") })
}

func benchReceive(b *testing.B, mode string) {
	const streams = 1000
	var mu sync.Mutex
	frames := 0
	send := func(int, []byte, frame.Flags) error { mu.Lock(); frames++; mu.Unlock(); return nil }
	lo, hi := freeRange(b, 2*streams+200)
	pool := newPortPool(netipLoopback, lo, hi, 0)
	var shared *sharedRTP
	if mode == "shared" {
		var err error
		if shared, err = openSharedRTP(netipLoopback, hi+2, runtime.GOMAXPROCS(0), newMetrics(prometheus.NewRegistry())); err != nil {
			b.Fatal(err)
		}
		defer shared.close()
	}
	var wg sync.WaitGroup
	var txs []*net.UDPConn
	var dsts []netip.AddrPort
	var closers []func()
	for range streams {
		tx, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.Fatal(err)
		}
		defer tx.Close()
		txs = append(txs, tx)
		from := tx.LocalAddr().(*net.UDPAddr).AddrPort()
		st := testStream(send)
		st.setRemote(from)
		switch mode {
		case "gopoll":
			c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				b.Fatal(err)
			}
			dsts = append(dsts, c.LocalAddr().(*net.UDPAddr).AddrPort())
			closers = append(closers, func() { _ = c.Close() })
			wg.Go(func() { goPollRead(c, st) })
			continue
		case "shared":
			st.tr = shared.add(st, from)
			st.activate()
		default:
			c, err := pool.open()
			if err != nil {
				b.Fatal(err)
			}
			st.tr = c
		}
		dsts = append(dsts, netip.AddrPortFrom(netipLoopback, uint16(st.port())))
		closers = append(closers, func() { st.release(pool) })
		wg.Go(st.run)
	}
	pkt := rtpPacket(8, 0, 0, make([]byte, 160))
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b.ReportAllocs()
	var sendCPU time.Duration
	p0 := processCPU()
	next := time.Now()
	for i := 0; b.Loop(); i++ {
		t0 := threadCPU()
		seq, ts := uint16(i), uint32(160*i)
		pkt[2], pkt[3] = byte(seq>>8), byte(seq)
		pkt[4], pkt[5], pkt[6], pkt[7] = byte(ts>>24), byte(ts>>16), byte(ts>>8), byte(ts)
		for k, d := range dsts {
			if _, err := txs[k].WriteToUDPAddrPort(pkt, d); err != nil {
				b.Fatal(err)
			}
		}
		sendCPU += threadCPU() - t0
		next = next.Add(frameDur)
		time.Sleep(time.Until(next))
	}
	recv := processCPU() - p0 - sendCPU
	b.StopTimer()
	for _, c := range closers {
		c()
	}
	wg.Wait()
	pkts := float64(b.N * streams)
	b.ReportMetric(float64(recv.Nanoseconds())/pkts, "cpu-ns/pkt")
	b.ReportMetric(float64(recv.Nanoseconds())/pkts*2*50/1e3, "cpu-µs/call-s")
	mu.Lock()
	defer mu.Unlock()
	if frames < b.N*streams*9/10 {
		b.Errorf("%d frames for %d packets", frames, b.N*streams)
	}
}
