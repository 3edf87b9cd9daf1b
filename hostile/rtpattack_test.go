package hostile

import (
	"fmt"
	"math/rand/v2"
	"net"
	"testing"
	"time"
)

const rtpFlood = 100000

// sipCallUp places a call from 127.0.0.1 and sends a second of audio on it.
func (s *suite) sipCallUp(t *testing.T, r *row, name string) (*sipCall, *frameCounter) {
	c := newSIPClient(t, net.IPv4(127, 0, 0, 1), 0, s.n.sip)
	id := fmt.Sprintf("%s-%08x", name, rand.Uint32())
	fc := s.n.countFrames(sipTenant, id)
	call, why := c.call(t, id)
	if call == nil {
		fc.stop()
		r.failf("the attacker's own call was not answered: %s", why)
		t.FailNow()
	}
	call.talk(time.Second)
	return call, fc
}

// hangUp ends the call and waits (bounded) until no more frames are published on it; it
// reports how many were published after the BYE.
func (s *suite) hangUp(r *row, call *sipCall, fc *frameCounter) int {
	at := fc.count()
	call.bye()
	last, stable := fc.count(), time.Now()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) && time.Since(stable) < time.Second {
		time.Sleep(100 * time.Millisecond)
		if n := fc.count(); n != last {
			last, stable = n, time.Now()
		}
	}
	if time.Since(stable) < time.Second {
		r.failf("the call still published frames 15 s after its BYE")
	}
	return fc.stop() - at
}

// burst sends packets from conn as fast as the socket takes them.
func burst(conn *net.UDPConn, n int, pkt func(i int) ([]byte, *net.UDPAddr)) time.Duration {
	t0 := time.Now()
	for i := 0; i < n; i++ {
		b, to := pkt(i)
		_, _ = conn.WriteToUDP(b, to)
		if i%2000 == 1999 {
			time.Sleep(time.Millisecond) // let the receiver's socket drain a little: we measure the node, not the kernel
		}
	}
	return time.Since(t0)
}

// rtpUnallocated floods every port of the node's RTP range with no call on it.
func (s *suite) rtpUnallocated(t *testing.T, r *row) {
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ports := s.n.rtpMax - s.n.rtpMin + 1
	took := burst(conn, rtpFlood, func(i int) ([]byte, *net.UDPAddr) {
		return rtpPacket(uint16(i), uint32(i)*160, 0xbad), &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: s.n.rtpMin + i%ports}
	})
	time.Sleep(500 * time.Millisecond) // let the node read what it will (not an assertion)
	r.didf("%d packets over the %d ports of the RTP range, no call on them, in %.1f s: no socket is open there, the kernel drops them", rtpFlood, ports, took.Seconds())
}

// rtpAllocatedSpoofed floods an answered call's RTP port from an address other than the one in
// its offer: every packet must be dropped by the source check.
func (s *suite) rtpAllocatedSpoofed(t *testing.T, r *row) {
	call, fc := s.sipCallUp(t, r, "spoof")
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dropped0 := s.n.metric("callrouter_sip_rtp_dropped_total")
	f0, t0 := fc.count(), time.Now()
	took := burst(conn, rtpFlood, func(i int) ([]byte, *net.UDPAddr) {
		return rtpPacket(uint16(i), uint32(i)*1000003, call.ssrc), call.media
	})
	time.Sleep(time.Second)
	frames, wall := fc.count()-f0, time.Since(t0)
	after := s.hangUp(r, call, fc)
	r.frames = fmt.Sprintf("%d in %.1f s (+%d after BYE)", frames, wall.Seconds(), after)
	r.didf("%d packets to the call's port from another port in %.1f s: %.0f counted dropped", rtpFlood, took.Seconds(), s.n.metric("callrouter_sip_rtp_dropped_total")-dropped0)
	if limit := realTime(wall); frames > limit {
		r.failf("the call published %d frames in %.1f s, more than real time allows (%d)", frames, wall.Seconds(), limit)
	}
}

// realTime is the frames a call may publish in d: 50 a second, plus a second of slack.
func realTime(d time.Duration) int { return int(d/(20*time.Millisecond)) + 50 }

// rtpPeerRandom sends packets with random sequence numbers and timestamps from the call's own
// address: each may re-anchor the stream, but no packet may turn into a burst of frames.
func (s *suite) rtpPeerRandom(t *testing.T, r *row) {
	call, fc := s.sipCallUp(t, r, "random")
	const n, perPacket = 10000, 10
	f0, t0 := fc.count(), time.Now()
	took := burst(call.rtp, n, func(int) ([]byte, *net.UDPAddr) {
		return rtpPacket(uint16(rand.Uint32()), rand.Uint32(), call.ssrc), call.media
	})
	time.Sleep(2 * time.Second)
	frames, wall := fc.count()-f0, time.Since(t0)
	after := s.hangUp(r, call, fc)
	r.frames = fmt.Sprintf("%d in %.1f s (+%d after BYE)", frames, wall.Seconds(), after)
	r.didf("%d packets with random sequence numbers and timestamps from the peer in %.1f s", n, took.Seconds())
	if frames > perPacket*n+realTime(wall) {
		r.failf("%d packets caused %d frames, want ≤ %d (%d a packet)", n, frames, perPacket*n+realTime(wall), perPacket)
	}
}

// rtpTimestampJump holds back one packet, sends the next (it waits in the reorder buffer), then
// one whose timestamp is 2^30 ahead.
func (s *suite) rtpTimestampJump(t *testing.T, r *row) {
	call, fc := s.sipCallUp(t, r, "jump")
	const window, bound = 5 * time.Second, 1000
	call.seq++ // held back
	call.ts += 160
	call.next() // waits for the one held back
	f0 := fc.count()
	call.seq++
	call.ts += 1 << 30
	_, _ = call.rtp.WriteToUDP(rtpPacket(call.seq, call.ts, call.ssrc), call.media)
	time.Sleep(window)
	frames := fc.count() - f0
	after := s.hangUp(r, call, fc)
	r.frames = fmt.Sprintf("%d in %v after the jump (+%d after BYE)", frames, window, after)
	r.didf("one packet held back, the next sent, then one 2^30 ticks ahead")
	if frames > bound {
		r.failf("one packet caused %d frames within %v, want ≤ %d", frames, window, bound)
	}
}
