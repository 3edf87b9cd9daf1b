//go:build linux

package sip

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/peertest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// sharedLeg is a stream on a shared port whose frames are recorded by their first byte.
type sharedLeg struct {
	st   *stream
	mu   sync.Mutex
	seen map[byte]int // frames by first payload byte (each sender sends its own byte)
	gaps int          // gap-filled frames
	done chan struct{}
}

func (l *sharedLeg) count(b byte) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seen[b]
}

func openShared(t *testing.T) (*sharedRTP, netip.AddrPort) {
	t.Helper()
	r, err := openSharedRTP(netipLoopback, peertest.Port(t), 2, newMetrics(prometheus.NewRegistry()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.close)
	return r, netip.AddrPortFrom(netipLoopback, uint16(r.port))
}

// startShared puts a stream that declared source from on r and runs it.
func startShared(t *testing.T, r *sharedRTP, from netip.AddrPort) *sharedLeg {
	l := &sharedLeg{seen: map[byte]int{}, done: make(chan struct{})}
	l.st = testStream(func(_ int, p []byte, f frame.Flags) error {
		l.mu.Lock()
		if f&frame.FlagGapFilled == 0 {
			l.seen[p[0]]++
		} else {
			l.gaps++
		}
		l.mu.Unlock()
		return nil
	})
	l.st.setRemote(from)
	l.st.tr = r.add(l.st, from)
	l.st.activate()
	go func() { defer close(l.done); l.st.run() }()
	t.Cleanup(func() {
		l.st.stop()
		select {
		case <-l.done:
		case <-time.After(10 * time.Second):
			t.Error("stream did not stop")
		}
	})
	return l
}

func udpSender(t *testing.T) (*net.UDPConn, netip.AddrPort) {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// rtpFrom is a 20 ms PCMA packet of SSRC ssrc whose payload is all b.
func rtpFrom(seq int, ssrc uint32, b byte) []byte {
	p := make([]byte, 160)
	for i := range p {
		p[i] = b
	}
	pkt := rtpPacket(8, uint16(seq), uint32(160*seq), p)
	pkt[8], pkt[9], pkt[10], pkt[11] = byte(ssrc>>24), byte(ssrc>>16), byte(ssrc>>8), byte(ssrc)
	return pkt
}

func dropped(r *sharedRTP, reason string) float64 {
	return testutil.ToFloat64(r.m.rtpDropped.WithLabelValues(reason))
}

// TestSharedPortRoutesBySource sends two calls' streams from two sources into one port, and
// packets from a third source that no call declared: each call gets its own audio only, and the
// stranger's packets are dropped and counted.
func TestSharedPortRoutesBySource(t *testing.T) {
	r, port := openShared(t)
	txA, a := udpSender(t)
	txB, b := udpSender(t)
	txX, _ := udpSender(t)
	la, lb := startShared(t, r, a), startShared(t, r, b)
	for i := range 20 {
		for _, s := range []struct {
			c    *net.UDPConn
			ssrc uint32
			b    byte
		}{{txA, 1, 'a'}, {txB, 2, 'b'}, {txX, 1, 'x'}} {
			if _, err := s.c.WriteToUDPAddrPort(rtpFrom(i, s.ssrc, s.b), port); err != nil {
				t.Fatal(err)
			}
		}
	}
	eventually(t, 10*time.Second, "20 frames on each call", func() bool { return la.count('a') >= 19 && lb.count('b') >= 19 })
	eventually(t, 10*time.Second, "20 stranger packets counted", func() bool { return dropped(r, "source") == 20 })
	if la.count('b')+la.count('x') != 0 || lb.count('a')+lb.count('x') != 0 {
		t.Errorf("call A got %v, call B got %v: audio of another source", la.seen, lb.seen)
	}
}

// TestSharedPortFillsSilence: a stream whose sender goes quiet gets silence filled in real time
// by its reader's sweep, which skips the streams not due (stream.idle), beside a stream that
// keeps sending.
func TestSharedPortFillsSilence(t *testing.T) {
	r, port := openShared(t)
	txA, a := udpSender(t)
	txB, b := udpSender(t)
	la, lb := startShared(t, r, a), startShared(t, r, b)
	gaps := func(l *sharedLeg) int {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.gaps
	}
	for i := 0; i < 500 && gaps(la) < 10; i++ { // at most 10 s
		if i < 5 {
			if _, err := txA.WriteToUDPAddrPort(rtpFrom(i, 1, 'a'), port); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := txB.WriteToUDPAddrPort(rtpFrom(i, 2, 'b'), port); err != nil {
			t.Fatal(err)
		}
		time.Sleep(frameDur)
	}
	if g := gaps(la); g < 10 || la.count('a') < 4 {
		t.Fatalf("quiet stream: %d frames of audio, %d filled; want its 5 packets and then fill", la.count('a'), g)
	}
	if lb.count('b') < 5 || lb.count('a') != 0 {
		t.Errorf("the stream beside it got %v", lb.seen)
	}
}

// TestSharedPortSSRC: once a stream has taken an SSRC, a packet from its source with another
// SSRC (a spoofed source, or a second sender) is dropped while the first SSRC is live; a sender
// that changes SSRC and stays with it is followed after ssrcHold, as the per-port mode follows
// it; and two streams that declared the same source are told apart by SSRC.
func TestSharedPortSSRC(t *testing.T) {
	r, port := openShared(t)
	tx, a := udpSender(t)
	l := startShared(t, r, a)
	send := func(seq int, ssrc uint32, b byte) {
		t.Helper()
		if _, err := tx.WriteToUDPAddrPort(rtpFrom(seq, ssrc, b), port); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 10 {
		send(i, 7, 'a')
		send(i, 9, 'x') // the source's address and port, not its SSRC
	}
	eventually(t, 10*time.Second, "10 frames", func() bool { return l.count('a') >= 9 })
	eventually(t, 10*time.Second, "10 foreign-SSRC packets counted", func() bool { return dropped(r, "ssrc") == 10 })
	if n := l.count('x'); n != 0 {
		t.Fatalf("%d frames of a foreign SSRC accepted", n)
	}

	// The sender changes SSRC for good: after ssrcHold without the old one, the new one is taken.
	deadline := time.Now().Add(10 * time.Second)
	for seq := 100; l.count('c') < 5; seq++ {
		if time.Now().After(deadline) {
			t.Fatalf("the new SSRC was never taken: %v", l.seen)
		}
		send(seq, 8, 'c')
		time.Sleep(frameDur)
	}

	// Two streams declared one source: their SSRCs tell them apart.
	tx2, s2 := udpSender(t)
	l1, l2 := startShared(t, r, s2), startShared(t, r, s2)
	for i := range 10 {
		for _, p := range [][]byte{rtpFrom(i, 100, '1'), rtpFrom(i, 200, '2')} {
			if _, err := tx2.WriteToUDPAddrPort(p, port); err != nil {
				t.Fatal(err)
			}
		}
	}
	eventually(t, 10*time.Second, "10 frames on each stream", func() bool {
		return (l1.count('1') >= 9 && l2.count('2') >= 9) || (l1.count('2') >= 9 && l2.count('1') >= 9)
	})
	if (l1.count('1') > 0 && l1.count('2') > 0) || (l2.count('1') > 0 && l2.count('2') > 0) {
		t.Errorf("streams mixed: %v and %v", l1.seen, l2.seen)
	}
}

// TestSharedPortRekeyAndClose: a re-INVITE's new source replaces the old one (whose packets are
// dropped from then on), and a closed stream takes no packet.
func TestSharedPortRekeyAndClose(t *testing.T) {
	r, port := openShared(t)
	txA, a := udpSender(t)
	txB, b := udpSender(t)
	l := startShared(t, r, a)
	l.st.setRemote(b)
	for i := range 10 {
		_, _ = txA.WriteToUDPAddrPort(rtpFrom(i, 1, 'a'), port)
		_, _ = txB.WriteToUDPAddrPort(rtpFrom(i, 2, 'b'), port)
	}
	eventually(t, 10*time.Second, "10 frames from the new source", func() bool { return l.count('b') >= 9 })
	eventually(t, 10*time.Second, "the old source's packets counted", func() bool { return dropped(r, "source") == 10 })
	l.st.stop()
	<-l.done
	before := dropped(r, "source")
	_, _ = txB.WriteToUDPAddrPort(rtpFrom(20, 2, 'b'), port)
	eventually(t, 10*time.Second, "a packet to a closed stream counted", func() bool { return dropped(r, "source") == before+1 })
}

// TestSIPpSharedPort runs 20 concurrent SIPp uac_pcap calls on the shared port: SIPp sends each
// call's RTP from the port its offer declares ([auto_media_port], one per call), so every call
// gets every frame of the pcap and its DTMF digit, nothing is dropped for its source or SSRC,
// and no call takes a port of its own.
func TestSIPpSharedPort(t *testing.T) {
	const calls = 20
	e := startEnv(t, 2, func(c *Config) { c.RTPShared = true })
	dir := pcapDir(t)
	var own int
	stop := make(chan struct{})
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
				if n, _ := e.srv.ports.stats(); n > own {
					own = n
				}
			}
		}
	}()
	e.sipp(t, dir, 60*time.Second, "-sn", "uac_pcap", "-m", fmt.Sprint(calls), "-l", fmt.Sprint(calls), "-r", "20")
	close(stop)
	<-polled
	eventually(t, 15*time.Second, "the workers to stop every call", func() bool { return len(callKeys()) == calls })
	var want []byte
	for _, p := range pcapRTP(t, "/usr/share/sip-tester/g711a.pcap") {
		want = append(want, p...)
	}
	for _, k := range callKeys() {
		checkPcapLeg(t, k, rec.snapshot(k+"/0"), want)
	}
	if n := len(e.events.of("dtmf")); n != calls {
		t.Errorf("%d dtmf events, want %d", n, calls)
	}
	for _, reason := range []string{"source", "ssrc"} {
		if n := testutil.ToFloat64(e.srv.m.rtpDropped.WithLabelValues(reason)); n != 0 {
			t.Errorf("%v packets dropped for their %s", n, reason)
		}
	}
	if own != 0 {
		t.Errorf("%d calls took a port of their own", own)
	}
}

// TestSharedPortNeedsAddrCheck: the shared port routes by source port, so a looser source check
// is refused with an error that names both flags.
func TestSharedPortNeedsAddrCheck(t *testing.T) {
	c := DefaultConfig()
	c.RTPShared, c.SourceCheck = true, SourceCheckIP
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "-sip-rtp-shared") || !strings.Contains(err.Error(), "-sip-source-check") {
		t.Errorf("shared port with source check ip: %v", err)
	}
	c.SourceCheck = SourceCheckAddr
	if err := c.Validate(); err != nil {
		t.Error(err)
	}
}

// TestSharedPortRekeyAfterClose: a re-INVITE that crosses the call's end leaves nothing behind.
func TestSharedPortRekeyAfterClose(t *testing.T) {
	r, _ := openShared(t)
	_, a := udpSender(t)
	_, b := udpSender(t)
	l := startShared(t, r, a)
	l.st.stop()
	<-l.done
	l.st.setRemote(b)
	r.mu.RLock()
	defer r.mu.RUnlock()
	if len(r.routes) != 0 || len(r.sweeps[0])+len(r.sweeps[1]) != 0 {
		t.Errorf("routes %v and sweeps %v left after the stream closed", r.routes, r.sweeps)
	}
}

// TestSharedPortPanicEndsOneStream: a panic in one stream's packet handling ends that stream
// alone (its run raises it again, on its own goroutine, for the call to end with reason
// "error"); the reader and the other streams on the port go on.
func TestSharedPortPanicEndsOneStream(t *testing.T) {
	r, port := openShared(t)
	txA, a := udpSender(t)
	txB, b := udpSender(t)
	good := startShared(t, r, b)
	victim := testStream(func(int, []byte, frame.Flags) error { return nil })
	hook := func(raw []byte) {
		if len(raw) > 12 && raw[12] == 0xEE {
			panic("injected RTP panic")
		}
	}
	victim.hook = &hook
	victim.setRemote(a)
	victim.tr = r.add(victim, a)
	victim.activate()
	panicked := make(chan any, 1)
	go func() {
		defer func() { panicked <- recover() }()
		victim.run()
	}()
	if _, err := txA.WriteToUDPAddrPort(rtpFrom(0, 1, 0xEE), port); err != nil {
		t.Fatal(err)
	}
	select {
	case v := <-panicked:
		if v != "injected RTP panic" {
			t.Fatalf("run ended with %v, want the injected panic", v)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the panicking stream's run did not end")
	}
	victim.release(nil)
	for i := range 10 {
		_, _ = txB.WriteToUDPAddrPort(rtpFrom(i, 2, 'b'), port)
	}
	eventually(t, 10*time.Second, "the other stream's frames", func() bool { return good.count('b') >= 9 })
}

// TestSharedPortHeld: a port another socket holds, even one that allows sharing it
// (SO_REUSEPORT, as a second ingest on the same range would), is refused rather than shared.
func TestSharedPortHeld(t *testing.T) {
	r, port := openShared(t)
	if _, err := openSharedRTP(netipLoopback, int(port.Port()), 1, r.m); err == nil {
		t.Fatal("a second shared port on a port in use opened")
	}
}
