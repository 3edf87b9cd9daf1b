package sip

import (
	"fmt"
	"net"
	"testing"
	"time"
)

// rtpTo sends one 20 ms PCMU packet of byte b from conn to port.
func rtpTo(t *testing.T, conn *net.UDPConn, port int, seq uint16, ts uint32, b byte) {
	t.Helper()
	pkt := make([]byte, 12+160)
	pkt[0], pkt[1] = 0x80, 0
	pkt[2], pkt[3] = byte(seq>>8), byte(seq)
	pkt[4], pkt[5], pkt[6], pkt[7] = byte(ts>>24), byte(ts>>16), byte(ts>>8), byte(ts)
	pkt[11] = 7
	for j := 12; j < len(pkt); j++ {
		pkt[j] = b
	}
	if _, err := conn.WriteToUDP(pkt, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}); err != nil {
		t.Fatal(err)
	}
}

// TestIngestHeldBackPacketThenTimestampJump is the attack through a real call: the sender holds
// back one packet so the next waits in the reorder buffer, then sends a packet 2^30 ticks ahead.
// The jump check used to run only when the reorder buffer was empty, and the node published
// millions of frames for the call; now the jump re-anchors the stream, the frames stay within
// the bound, and the audio after it flows one frame per packet.
func TestIngestHeldBackPacketThenTimestampJump(t *testing.T) {
	e := startEnv(t, 1, func(c *Config) { c.RTPTimeout = time.Second })
	u := newUAC(t, e.addr)
	id := newCallID("jump")
	res := u.invite(id, "")
	if codeOf(res) != "200" {
		t.Fatalf("call: %s", res)
	}
	port := 0
	fmt.Sscan(mPortRe.FindStringSubmatch(res)[1], &port)
	seq, ts := uint16(300), uint32(5000)
	send := func(b byte) {
		rtpTo(t, u.rtp, port, seq, ts, b)
		seq, ts = seq+1, ts+160
		time.Sleep(20 * time.Millisecond)
	}
	for i := 0; i < 10; i++ {
		send(0x11)
	}
	seq, ts = seq+1, ts+160 // held back
	send(0x22)              // waits for the held back one
	ts += 1 << 30
	for i := 0; i < 25; i++ {
		send(0x33)
	}
	if !u.awaitBye(id, 30*time.Second) {
		t.Fatal("no BYE after the RTP timeout")
	}
	eventually(t, 30*time.Second, "the worker to stop the call", func() bool { return len(callKeys()) == 1 })
	l := rec.snapshot(callKeys()[0] + "/0")
	// 10 + 1 + 25 real frames, the held back one gap-filled, a few more if the loaded machine
	// stalled the sender past the silence threshold.
	if len(l.seqs) > 36+1+50 {
		t.Fatalf("%d frames published for 36 packets", len(l.seqs))
	}
	if real := len(l.seqs) - l.gapFilled; real != 36 {
		t.Errorf("%d real frames, want 36", real)
	}
	if n := len(l.payload); n < 160 || l.payload[n-1] != 0x33 {
		t.Errorf("the audio after the jump did not arrive")
	}
}
