package sip

import (
	"net/netip"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/prometheus/client_golang/prometheus"
)

func testStream(send func(int, []byte, frame.Flags) error) *stream {
	st := &stream{codec: codecByName["pcma"], audioPT: 8, eventPT: 101, check: SourceCheckAddr, m: newMetrics(prometheus.NewRegistry()), send: send}
	st.setRemote(netip.MustParseAddrPort("127.0.0.1:4000"))
	st.cut = newCutter(8000, 60*time.Millisecond, 400*time.Millisecond, 0xD5, st.emit)
	return st
}

func rtpPacket(pt uint8, seq uint16, ts uint32, payload []byte) []byte {
	b := []byte{0x80, pt, byte(seq >> 8), byte(seq), byte(ts >> 24), byte(ts >> 16), byte(ts >> 8), byte(ts), 0, 0, 0, 7}
	return append(b, payload...)
}

// TestStreamDTMFMediaTimestamp checks that a telephone event on the audio's SSRC is placed on
// the leg's frame timeline.
func TestStreamDTMFMediaTimestamp(t *testing.T) {
	var frames int
	st := testStream(func(int, []byte, frame.Flags) error { frames++; return nil })
	var got []int64
	st.dtmf.report = func(e dtmfEvent) {
		pos, ok := st.cut.mediaPos(e.TS, e.SSRC)
		if !ok {
			t.Error("event not on the audio timeline")
		}
		got = append(got, pos)
	}
	from := netip.MustParseAddrPort("127.0.0.1:4000")
	now := time.Unix(0, 0)
	const ts0 = 1_000_000
	for i := 0; i < 20; i++ {
		st.handle(now, from, rtpPacket(8, uint16(i), ts0+uint32(160*i), make([]byte, 160)))
		now = now.Add(20 * time.Millisecond)
	}
	// A key pressed at frame 10 (timestamp ts0+1600), reported with its end packet.
	st.handle(now, from, rtpPacket(101, 20, ts0+1600, []byte{5, 0x0a, 0, 0}))
	st.handle(now, from, rtpPacket(101, 21, ts0+1600, []byte{5, 0x8a, 3, 0}))
	st.handle(now, netip.MustParseAddrPort("127.0.0.1:4001"), rtpPacket(8, 22, ts0, make([]byte, 160)))
	if len(got) != 1 || got[0] != 1600 || frames != 20 {
		t.Errorf("dtmf at %v, frames %d; want [1600] and 20", got, frames)
	}
}

func TestStreamZeroAllocs(t *testing.T) {
	st := testStream(func(int, []byte, frame.Flags) error { return nil })
	from := netip.MustParseAddrPort("127.0.0.1:4000")
	pkt := rtpPacket(8, 0, 0, make([]byte, 240))
	now := time.Unix(0, 0)
	var seq uint16
	var ts uint32
	allocs := testing.AllocsPerRun(1000, func() {
		pkt[2], pkt[3] = byte(seq>>8), byte(seq)
		pkt[4], pkt[5], pkt[6], pkt[7] = byte(ts>>24), byte(ts>>16), byte(ts>>8), byte(ts)
		st.handle(now, from, pkt)
		seq++
		ts += 240
		now = now.Add(30 * time.Millisecond)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per RTP packet, want 0", allocs)
	}
}

// BenchmarkStreamHandle is the per-packet receive path: RTP parse, source check, re-cutting
// 30 ms packets into 20 ms frames (the frame publish itself is the ingest core's).
func BenchmarkStreamHandle(b *testing.B) {
	st := testStream(func(int, []byte, frame.Flags) error { return nil })
	from := netip.MustParseAddrPort("127.0.0.1:4000")
	pkt := rtpPacket(8, 0, 0, make([]byte, 240))
	now := time.Unix(0, 0)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		seq, ts := uint16(i), uint32(240*i)
		pkt[2], pkt[3] = byte(seq>>8), byte(seq)
		pkt[4], pkt[5], pkt[6], pkt[7] = byte(ts>>24), byte(ts>>16), byte(ts>>8), byte(ts)
		st.handle(now, from, pkt)
		now = now.Add(30 * time.Millisecond)
	}
}
