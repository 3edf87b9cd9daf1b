//go:build linux

package sip

import (
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
)

// TestRTPReaders runs streams on one port pool's readers: every stream gets its packets, a
// stream whose sender stops gets silence filled in real time by the sweep, a panic in one
// stream's handling ends that stream alone (its run raises it again), closing the last stream
// stops the readers, and a stream opened after that is read again.
func TestRTPReaders(t *testing.T) {
	tx, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	from := tx.LocalAddr().(*net.UDPAddr).AddrPort()
	lo, hi := freeRange(t, 200)
	pool := newPortPool(netipLoopback, lo, hi, 0)

	type leg struct {
		st       *stream
		frames   atomic.Int64
		gaps     atomic.Int64
		panicked atomic.Value
		done     chan struct{}
	}
	start := func(hook *func([]byte)) *leg {
		l := &leg{done: make(chan struct{})}
		l.st = testStream(func(_ int, _ []byte, f frame.Flags) error {
			l.frames.Add(1)
			if f&frame.FlagGapFilled != 0 {
				l.gaps.Add(1)
			}
			return nil
		})
		l.st.setRemote(from)
		l.st.hook = hook
		c, err := pool.open()
		if err != nil {
			t.Fatal(err)
		}
		l.st.tr = c
		go func() {
			defer close(l.done)
			defer func() {
				if v := recover(); v != nil {
					l.panicked.Store(v)
				}
			}()
			l.st.run()
		}()
		return l
	}
	send := func(l *leg, n int) {
		to := netip.AddrPortFrom(netipLoopback, uint16(l.st.port()))
		for i := range n {
			if _, err := tx.WriteToUDPAddrPort(rtpPacket(8, uint16(i), uint32(160*i), make([]byte, 160)), to); err != nil {
				t.Fatal(err)
			}
		}
	}
	poison := func(raw []byte) {
		if len(raw) > 12 && raw[12] == 0xEE {
			panic("poisoned packet")
		}
	}
	legs := []*leg{start(nil), start(nil), start(nil), start(&poison)}
	for _, l := range legs[:3] {
		send(l, 10)
	}
	for _, l := range legs[:3] {
		eventually(t, 10*time.Second, "10 frames on every stream", func() bool { return l.frames.Load() >= 10 })
	}
	// The sender stopped: silence comes in real time (SilenceFill 400 ms in testStream).
	eventually(t, 10*time.Second, "silence filled", func() bool { return legs[0].gaps.Load() >= 5 })

	bad := legs[3]
	pkt := rtpPacket(8, 0, 0, make([]byte, 160))
	pkt[12] = 0xEE
	if _, err := tx.WriteToUDPAddrPort(pkt, netip.AddrPortFrom(netipLoopback, uint16(bad.st.port()))); err != nil {
		t.Fatal(err)
	}
	select {
	case <-bad.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the poisoned stream's run did not return")
	}
	if bad.panicked.Load() != "poisoned packet" {
		t.Errorf("the poisoned stream's run raised %v", bad.panicked.Load())
	}
	before := legs[1].frames.Load()
	send(legs[1], 20) // seq 0..19 again: 10 late, 10 new
	eventually(t, 10*time.Second, "the other streams read on", func() bool { return legs[1].frames.Load() >= before+10 })

	for _, l := range legs {
		l.st.release(pool)
		<-l.done
	}
	running := func() bool {
		for i := range pool.pollers.ps {
			p := &pool.pollers.ps[i]
			p.mu.Lock()
			r := p.running
			p.mu.Unlock()
			if r {
				return true
			}
		}
		return false
	}
	if running() {
		t.Error("readers still running with no stream left")
	}
	if used, _ := pool.stats(); used != 0 {
		t.Errorf("%d ports in use", used)
	}

	again := start(nil)
	send(again, 5)
	eventually(t, 10*time.Second, "a stream after the readers stopped", func() bool { return again.frames.Load() >= 5 })
	again.st.release(pool)
	<-again.done
}
