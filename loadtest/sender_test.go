package loadtest

import (
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// rtpSink receives one leg's RTP and checks it: one SSRC, sequence numbers in order with no
// repeat (unless impaired); it keeps the last packet's arrival.
type rtpSink struct {
	conn *net.UDPConn
	wg   sync.WaitGroup

	mu     sync.Mutex
	n      int64
	lastAt time.Time
	ssrc   uint32
	last   uint16
	bad    []string
}

func newRTPSink(t testing.TB, ordered bool) *rtpSink {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadBuffer(1 << 20)
	s := &rtpSink{conn: c}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 1500)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			now := time.Now()
			s.mu.Lock()
			s.check(buf[:n], now, ordered)
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.Close(); s.wg.Wait() })
	return s
}

func (s *rtpSink) check(p []byte, now time.Time, ordered bool) {
	if len(p) != 12+160 || p[0] != 0x80 {
		s.bad = append(s.bad, fmt.Sprintf("packet of %d bytes, first byte %#x", len(p), p[0]))
		return
	}
	seq, ssrc := binary.BigEndian.Uint16(p[2:]), binary.BigEndian.Uint32(p[8:])
	if s.n == 0 {
		s.ssrc = ssrc
	} else {
		if ssrc != s.ssrc {
			s.bad = append(s.bad, fmt.Sprintf("SSRC %x after %x", ssrc, s.ssrc))
		}
		if ordered && seq != s.last+1 {
			s.bad = append(s.bad, fmt.Sprintf("sequence %d after %d", seq, s.last))
		}
	}
	s.n++
	s.last, s.lastAt = seq, now
}

func (s *rtpSink) count() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// playSIP plays calls two-leg calls of frames 20 ms frames each through a pacer at real time,
// the RTP going to sinks (dst overrides one leg's destination), and returns the target, the
// streams and the pacer once every call has ended.
func playSIP(t *testing.T, rtpSocket string, imp Impairments, calls, frames int, dst map[[2]int]*net.UDPAddr) (*sipTarget, []*stream, []*rtpSink, *Collector, *pacer, []time.Time) {
	t.Helper()
	col := newCollector("senders", time.Now(), time.Second, 1)
	tgt := &sipTarget{imp: imp, col: col}
	if rtpSocket == RTPSocketShared {
		var err error
		if tgt.shared, err = listenRTP("127.0.0.1"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tgt.shared.Close() })
	}
	p := newPacer(2, 20*time.Millisecond, time.Millisecond, col)
	p.start()
	defer p.stop()
	rec := silentRecording(2, 50)
	var done sync.WaitGroup
	var streams []*stream
	var sinks []*rtpSink
	var added []time.Time
	for i := 0; i < calls; i++ {
		c, err := tgt.newCall(fmt.Sprintf("c%d", i), "127.0.0.1", ptPCMU, 2)
		if err != nil {
			t.Fatal(err)
		}
		for leg, l := range c.legs {
			s := newRTPSink(t, !imp.any())
			sinks = append(sinks, s)
			l.dst = s.conn.LocalAddr().(*net.UDPAddr)
			if a := dst[[2]int{i, leg}]; a != nil {
				l.dst = a
			}
		}
		st := &stream{call: c.d.callID, h: endOnly{c}, rec: rec, frames: frames, done: func(*stream) { done.Done() }}
		streams = append(streams, st)
		done.Add(1)
		added = append(added, time.Now())
		p.add(st)
	}
	waitTimeout(t, &done, time.Duration(frames)*20*time.Millisecond+30*time.Second)
	tgt.ends.Wait() // the legs' sockets closed
	return tgt, streams, sinks, col, p, added
}

// endOnly is a SIP call whose End releases its held packets and closes its sockets without a
// BYE (the tests have no SIP server).
type endOnly struct{ *sipCall }

func (e endOnly) End() {
	e.remoteEnded.Store(true)
	e.sipCall.End()
}

func waitTimeout(t *testing.T, wg *sync.WaitGroup, d time.Duration) {
	t.Helper()
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(d):
		t.Fatalf("calls still playing after %v", d)
	}
}

// received polls until the sinks have n packets between them or the deadline passes.
func received(sinks []*rtpSink, n int64, d time.Duration) int64 {
	deadline := time.Now().Add(d)
	for {
		var got int64
		for _, s := range sinks {
			got += s.count()
		}
		if got >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSIPSendersAccountEveryFrame(t *testing.T) {
	const calls, frames = 20, 50 // a second of audio
	for _, mode := range []string{RTPSocketLeg, RTPSocketShared} {
		t.Run(mode, func(t *testing.T) {
			tgt, streams, sinks, col, p, added := playSIP(t, mode, Impairments{}, calls, frames, nil)
			if got := received(sinks, calls*2*frames, 10*time.Second); got != calls*2*frames || tgt.sent.Load() != got {
				t.Errorf("%d packets arrived, %d counted sent by the target, want %d", got, tgt.sent.Load(), calls*2*frames)
			}
			for i, st := range streams {
				for leg, n := range st.sent {
					s := sinks[2*i+leg]
					s.mu.Lock()
					if n != frames || s.n != n {
						t.Errorf("call %d leg %d: %d frames counted sent, %d packets arrived, want %d", i, leg, n, s.n, frames)
					}
					if len(s.bad) > 0 {
						t.Errorf("call %d leg %d: %v", i, leg, s.bad[:min(3, len(s.bad))])
					}
					// Pacing never runs ahead: the last frame is due frames-1 periods after the first.
					if span := s.lastAt.Sub(added[i]); span < (frames-1)*20*time.Millisecond {
						t.Errorf("call %d leg %d: %d frames went out in %v", i, leg, frames, span)
					}
					s.mu.Unlock()
				}
			}
			if tot, _ := col.finish(0); tot.Sent != calls*2*frames || tot.Lost != 0 {
				t.Errorf("collector: %d sent, %d lost; want %d, 0", tot.Sent, tot.Lost, calls*2*frames)
			}
			// Pacing: frames go out within a few ticks of their due time, even on a loaded machine.
			if q := p.lateness(0.5); q[0] > 20*time.Millisecond {
				t.Errorf("median frame went out %v late", q[0])
			}
		})
	}
}

func TestSIPSendersImpairedSharedSocket(t *testing.T) {
	const calls, frames = 10, 50
	tgt, _, sinks, col, _, _ := playSIP(t, RTPSocketShared, Impairments{Loss: 0.1, Jitter: 10 * time.Millisecond}, calls, frames, nil)
	want := int64(calls*2*frames) - tgt.dropped.Load()
	if tgt.dropped.Load() == 0 || tgt.delayed.Load() == 0 {
		t.Fatalf("impairments not applied: %d dropped, %d delayed", tgt.dropped.Load(), tgt.delayed.Load())
	}
	if got := received(sinks, want, 10*time.Second); got != want || tgt.sent.Load() != want {
		t.Errorf("%d packets arrived, %d counted sent; want %d (%d frames, %d dropped)", got, tgt.sent.Load(), want, calls*2*frames, tgt.dropped.Load())
	}
	if tot, _ := col.finish(0); tot.Sent != calls*2*frames {
		t.Errorf("collector: %d sent, want %d", tot.Sent, calls*2*frames)
	}
}

// A packet the kernel refuses in a batch ends its leg and is counted as the tester's loss; the
// other packets of the batch still go.
func TestSIPSendersRefusedBatchedPacket(t *testing.T) {
	const calls, frames = 4, 50
	bad := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 0} // sendmmsg: EINVAL
	tgt, streams, sinks, col, _, _ := playSIP(t, RTPSocketShared, Impairments{}, calls, frames, map[[2]int]*net.UDPAddr{{1, 0}: bad})
	if tgt.failed.Load() != 1 {
		t.Errorf("%d packets refused, want 1", tgt.failed.Load())
	}
	// The call ends at its next frame: one frame sent on each leg, the first leg's refused.
	if n := streams[1].sent; n[0] != 1 || n[1] != 1 {
		t.Errorf("refused call counted %v frames sent, want [1 1]", n)
	}
	sent := int64((calls-1)*2*frames + 2)
	if got := received(sinks, sent-1, 10*time.Second); got != sent-1 || tgt.sent.Load() != sent-1 {
		t.Errorf("%d packets arrived, %d counted sent by the target; want %d", got, tgt.sent.Load(), sent-1)
	}
	// (No worker reports here: what the sinks got stands for what workers would receive.)
	tot, _ := col.finish(0)
	if tot.Sent != sent || tot.Lost != 1 || tot.LostBy["network_loss"] != 1 {
		t.Errorf("collector: %d sent, %d lost (%v); want %d, 1 network_loss", tot.Sent, tot.Lost, tot.LostBy, sent)
	}
}

// A refusal of a leg's very last packet, learnt only when the batch goes out, is charged too.
func TestSIPSendersRefusedLastPacket(t *testing.T) {
	bad := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 0}
	tgt, streams, _, col, _, _ := playSIP(t, RTPSocketShared, Impairments{}, 1, 1, map[[2]int]*net.UDPAddr{{0, 1}: bad})
	if tgt.failed.Load() != 1 || streams[0].sent[1] != 1 {
		t.Errorf("%d packets refused, %d frames counted sent on the leg; want 1, 1", tgt.failed.Load(), streams[0].sent[1])
	}
	if tot, _ := col.finish(0); tot.Sent != 2 || tot.Lost != 1 || tot.LostBy["network_loss"] != 1 {
		t.Errorf("collector: %d sent, %d lost (%v); want 2, 1 network_loss", tot.Sent, tot.Lost, tot.LostBy)
	}
}

func TestSharedSocketRefusesSharedIngestPort(t *testing.T) {
	a := func(port int) *net.UDPAddr { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port} }
	if err := sharedSocketFits([]*net.UDPAddr{a(30000), a(30002)}); err != nil {
		t.Errorf("a port per stream: %v", err)
	}
	if err := sharedSocketFits([]*net.UDPAddr{a(30000), a(30000)}); err == nil || !strings.Contains(err.Error(), "-sip-rtp-socket leg") {
		t.Errorf("one port for both streams: %v, want refused", err)
	}
}

// BenchmarkSIPSenders measures the tester's own CPU per RTP packet in SIP mode: 300 or 1,000
// two-leg calls played in real time for 2 s to sockets nobody reads (their queues full, so the kernel
// drops each packet at the receiver: the send path is what is measured), with a socket per leg
// or the shared socket and its batches. It reports how late frames went out, too. Run the two
// alternately, e.g. for m in leg shared; do go test -run XXX -bench "SIPSenders/$m-1000" -benchtime 1x ./loadtest/; done
func BenchmarkSIPSenders(b *testing.B) {
	for _, calls := range []int{300, 1000} {
		for _, mode := range []string{RTPSocketLeg, RTPSocketShared} {
			b.Run(fmt.Sprintf("%s-%d", mode, calls), func(b *testing.B) { benchSIPSenders(b, mode, calls) })
		}
	}
}

func benchSIPSenders(b *testing.B, mode string, calls int) {
	const run = 2 * time.Second
	var sink []*net.UDPAddr
	for range 2 * calls {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.Fatal(err)
		}
		_ = c.SetReadBuffer(1)
		defer c.Close()
		sink = append(sink, c.LocalAddr().(*net.UDPAddr))
	}
	rec := silentRecording(2, 50)
	for range b.N {
		col := newCollector("bench", time.Now(), time.Second, 1)
		tgt := &sipTarget{col: col}
		if mode == RTPSocketShared {
			var err error
			if tgt.shared, err = listenRTP("127.0.0.1"); err != nil {
				b.Fatal(err)
			}
		}
		var cs []*sipCall
		for i := range calls {
			c, err := tgt.newCall(fmt.Sprintf("c%d", i), "127.0.0.1", ptPCMU, 2)
			if err != nil {
				b.Fatal(err)
			}
			c.legs[0].dst, c.legs[1].dst = sink[2*i], sink[2*i+1]
			cs = append(cs, c)
		}
		p := newPacer(2, 20*time.Millisecond, time.Millisecond, col)
		p.start()
		cpu0 := cpuTime()
		for i, c := range cs {
			p.add(&stream{call: c.d.callID, h: endOnly{c}, rec: rec, frames: 1 << 30, done: func(*stream) {}})
			if i%(calls/20+1) == 0 {
				time.Sleep(time.Millisecond) // spread the calls' phases, as a ramp does
			}
		}
		time.Sleep(run)
		p.stop()
		cpu := cpuTime() - cpu0
		tgt.ends.Wait()
		if tgt.shared != nil {
			tgt.shared.Close()
		}
		pkts := tgt.sent.Load()
		q := p.lateness(0.5, 0.99, 1)
		b.ReportMetric(float64(cpu)/float64(pkts), "cpu-ns/pkt")
		b.ReportMetric(float64(pkts)/run.Seconds(), "pkts/s")
		b.ReportMetric(float64(q[0])/1e6, "late-p50-ms")
		b.ReportMetric(float64(q[1])/1e6, "late-p99-ms")
		b.ReportMetric(float64(q[2])/1e6, "late-max-ms")
	}
}

func TestRTPSocketFlag(t *testing.T) {
	for _, tc := range []struct {
		v   string
		bad bool
	}{{RTPSocketAuto, false}, {RTPSocketLeg, false}, {RTPSocketShared, false}, {"", true}, {"batched", true}} {
		c := DefaultConfig()
		c.Inputs, c.Mode, c.RTPSocket = []string{"x.wav"}, ModeSIP, tc.v
		err := c.Validate()
		if bad := err != nil && strings.Contains(err.Error(), "sip-rtp-socket"); bad != tc.bad {
			t.Errorf("sip-rtp-socket %q: %v; want refused %v", tc.v, err, tc.bad)
		}
	}
	for _, tc := range []struct{ v, sip, want string }{{RTPSocketAuto, "", RTPSocketShared}, {RTPSocketAuto, "127.0.0.1:5060", RTPSocketLeg},
		{RTPSocketLeg, "", RTPSocketLeg}, {RTPSocketShared, "127.0.0.1:5060", RTPSocketShared}} {
		c := Config{RTPSocket: tc.v, SIP: tc.sip}
		if got := c.rtpSocket(); got != tc.want {
			t.Errorf("sip-rtp-socket %s, sip %q: %s, want %s", tc.v, tc.sip, got, tc.want)
		}
	}
}

// Sending on the shared socket allocates nothing: the RTP header and payload are written into
// the batch's reused buffers.
func TestSIPSharedSendAllocatesNothing(t *testing.T) {
	if raceOn {
		t.Skip("the race detector allocates")
	}
	tgt := &sipTarget{}
	var err error
	if tgt.shared, err = listenRTP("127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	defer tgt.shared.Close()
	c, err := tgt.newCall("alloc", "127.0.0.1", ptPCMU, 2)
	if err != nil {
		t.Fatal(err)
	}
	sink, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}) // nobody reads: the kernel drops
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	c.legs[0].dst, c.legs[1].dst = sink.LocalAddr().(*net.UDPAddr), sink.LocalAddr().(*net.UDPAddr)
	var tx rtpBatches
	c.useBatch(&tx)
	payload := make([]byte, 160)
	if a := testing.AllocsPerRun(50, func() {
		for i := range 2 * rtpBatchMax {
			_ = c.Send(i%2, payload)
		}
		tx.flush()
	}); a != 0 {
		t.Errorf("%v allocations per %d packets, want 0", a, 2*rtpBatchMax)
	}
	if tgt.sent.Load() == 0 || tgt.failed.Load() != 0 {
		t.Errorf("%d packets sent, %d refused", tgt.sent.Load(), tgt.failed.Load())
	}
}
