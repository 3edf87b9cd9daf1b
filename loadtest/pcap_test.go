package loadtest

import (
	"bytes"
	"encoding/binary"
	"os"
	"testing"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/peertest"
	"github.com/callrouter/callrouter/internal/timeline"
)

// pcapWriter builds classic pcap files of Ethernet/IPv4/UDP/RTP packets for tests.
type pcapWriter struct {
	buf  bytes.Buffer
	link uint32
}

func newPcap(link uint32) *pcapWriter {
	w := &pcapWriter{link: link}
	h := make([]byte, 24)
	binary.LittleEndian.PutUint32(h[0:], 0xa1b2c3d4)
	binary.LittleEndian.PutUint16(h[4:], 2)
	binary.LittleEndian.PutUint16(h[6:], 4)
	binary.LittleEndian.PutUint32(h[16:], 65535)
	binary.LittleEndian.PutUint32(h[20:], link)
	w.buf.Write(h)
	return w
}

func rtpPacket(pt uint8, seq uint16, ts, ssrc uint32, payload []byte) []byte {
	b := make([]byte, 12, 12+len(payload))
	b[0] = 0x80
	b[1] = pt
	binary.BigEndian.PutUint16(b[2:], seq)
	binary.BigEndian.PutUint32(b[4:], ts)
	binary.BigEndian.PutUint32(b[8:], ssrc)
	return append(b, payload...)
}

// udp wraps an RTP packet in UDP, IPv4 and (for Ethernet) an Ethernet header.
func (w *pcapWriter) udp(usec int64, rtp []byte) {
	udp := make([]byte, 8, 8+len(rtp))
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], 6000)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(rtp)))
	udp = append(udp, rtp...)
	ip := make([]byte, 20, 20+len(udp))
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
	ip[8] = 64
	ip[9] = 17
	copy(ip[12:], []byte{127, 0, 0, 1})
	copy(ip[16:], []byte{127, 0, 0, 1})
	ip = append(ip, udp...)
	pkt := ip
	if w.link == linkEthernet {
		eth := make([]byte, 14, 14+len(ip))
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		pkt = append(eth, ip...)
	}
	w.record(usec, pkt)
}

func (w *pcapWriter) record(usec int64, pkt []byte) {
	h := make([]byte, 16)
	binary.LittleEndian.PutUint32(h[0:], uint32(usec/1e6))
	binary.LittleEndian.PutUint32(h[4:], uint32(usec%1e6))
	binary.LittleEndian.PutUint32(h[8:], uint32(len(pkt)))
	binary.LittleEndian.PutUint32(h[12:], uint32(len(pkt)))
	w.buf.Write(h)
	w.buf.Write(pkt)
}

func fill(n int, v byte) []byte { return bytes.Repeat([]byte{v}, n) }

func TestParsePcapRecutsReordersAndAligns(t *testing.T) {
	w := newPcap(linkEthernet)
	// Leg A: 30 ms packets (240 samples), packet 2 sent before packet 1, packet 4 lost.
	// Leg B: 20 ms packets starting 100 ms later, a different SSRC.
	// Noise: an RTCP packet, a telephone-event packet, a non-RTP UDP datagram.
	a := func(i int) []byte {
		return rtpPacket(ptPCMU, uint16(100+i), uint32(1000+240*i), 0xA, fill(240, byte(i+1)))
	}
	w.udp(0, a(0))
	w.udp(60_000, a(2))
	w.udp(61_000, a(1))
	w.udp(90_000, a(3))
	w.udp(100_000, rtpPacket(ptPCMU, 7, 5000, 0xB, fill(160, 0x40)))
	w.udp(120_000, rtpPacket(ptPCMU, 8, 5160, 0xB, fill(160, 0x41)))
	w.udp(130_000, []byte{0x81, 200, 0, 6, 0, 0, 0, 0xA}) // RTCP SR
	w.udp(140_000, rtpPacket(101, 9, 5160, 0xC, fill(4, 0)))
	w.udp(150_000, []byte("not rtp at all"))
	w.udp(150_000, a(5))
	rec, st, err := ParsePcapStats(w.buf.Bytes(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if st.Packets != 10 || st.RTP != 7 || st.Skipped != 3 || st.Streams != 2 {
		t.Errorf("stats %+v, want 10 packets, 7 RTP, 3 skipped, 2 streams", st)
	}
	if rec.Codec != frame.CodecPCMU || rec.Rate != 8000 || len(rec.Frames) != 2 {
		t.Fatalf("codec %v rate %d legs %d, want pcmu 8000 2", rec.Codec, rec.Rate, len(rec.Frames))
	}
	// Leg A spans 6 × 240 = 1440 samples = 9 frames of 160; leg B 100 ms (800 samples) of lead
	// silence then 320 samples: 1120 samples, 7 frames. The recording is as long as the longest.
	if rec.Len() != 9 || len(rec.Frames[1]) != 9 {
		t.Fatalf("frames %d/%d, want 9/9", rec.Len(), len(rec.Frames[1]))
	}
	legA := bytes.Join(rec.Frames[0], nil)
	for i, want := range []byte{1, 2, 3, 4, 0xFF, 6} {
		if got := legA[i*240 : (i+1)*240]; !bytes.Equal(got, fill(240, want)) {
			t.Errorf("leg A packet %d: got %x..., want all %#x", i, got[:4], want)
		}
	}
	legB := bytes.Join(rec.Frames[1], nil)
	if !bytes.Equal(legB[:800], fill(800, 0xFF)) || !bytes.Equal(legB[800:960], fill(160, 0x40)) || !bytes.Equal(legB[960:1120], fill(160, 0x41)) {
		t.Errorf("leg B is not 800 samples of silence, then its two packets")
	}
	one, err := ParsePcap(w.buf.Bytes(), 1)
	if err != nil || len(one.Frames) != 1 {
		t.Errorf("legs=1: %v legs, err %v", len(one.Frames), err)
	}
}

func TestParsePcapRejects(t *testing.T) {
	for name, b := range map[string][]byte{
		"empty":  nil,
		"pcapng": append([]byte{0x0a, 0x0d, 0x0d, 0x0a}, make([]byte, 40)...),
		"no rtp": newPcap(linkEthernet).buf.Bytes(),
		"link":   func() []byte { w := newPcap(147); w.udp(0, rtpPacket(0, 1, 1, 1, fill(160, 1))); return w.buf.Bytes() }(),
	} {
		if _, err := ParsePcap(b, 0); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestParsePcapRawIPAndDiscontinuity(t *testing.T) {
	w := newPcap(linkRaw)
	w.udp(0, rtpPacket(ptPCMA, 1, 0, 7, fill(160, 1)))
	w.udp(20_000, rtpPacket(ptPCMA, 2, 160, 7, fill(160, 2)))
	w.udp(40_000, rtpPacket(ptPCMA, 3, 4_000_000_000, 7, fill(160, 3))) // a jump: continues where the stream was
	rec, err := ParsePcap(w.buf.Bytes(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Codec != frame.CodecPCMA || rec.Len() != 3 || rec.Frames[0][2][0] != 3 {
		t.Errorf("codec %v, %d frames; want pcma, 3, the jumped packet third", rec.Codec, rec.Len())
	}
}

// TestParseSIPpPcap reads the G.711 A-law capture SIPp ships (30 ms packets), when installed.
func TestParseSIPpPcap(t *testing.T) {
	b, err := os.ReadFile("/usr/share/sip-tester/g711a.pcap")
	if err != nil {
		peertest.Missing(t, "sip-tester not installed")
	}
	rec, st, err := ParsePcapStats(b, 0)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Codec != frame.CodecPCMA || len(rec.Frames) != 1 || st.RTP != 236 || rec.Len() < 350 || rec.Len() > 356 {
		t.Errorf("codec %v, %d legs, %d RTP packets, %d frames; want pcma, 1, 236, about 354", rec.Codec, len(rec.Frames), st.RTP, rec.Len())
	}
}

func FuzzParsePcap(f *testing.F) {
	w := newPcap(linkEthernet)
	w.udp(0, rtpPacket(ptPCMU, 1, 0, 1, fill(160, 1)))
	w.udp(20_000, rtpPacket(ptPCMU, 2, 160, 1, fill(160, 2)))
	w.udp(20_000, rtpPacket(ptPCMA, 2, 160, 2, fill(160, 2)))
	f.Add(w.buf.Bytes())
	r := newPcap(linkRaw)
	r.udp(0, rtpPacket(ptPCMA, 1, 0, 1, fill(80, 1)))
	f.Add(r.buf.Bytes())
	if b, err := os.ReadFile("/usr/share/sip-tester/g711a.pcap"); err == nil && len(b) > 4096 {
		f.Add(b[:4096])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, st, err := ParsePcapStats(b, 0)
		if err != nil {
			return
		}
		if len(rec.Frames) == 0 || len(rec.Frames) > maxPcapLegs {
			t.Fatalf("%d legs", len(rec.Frames))
		}
		// Each packet makes at most timeline.MaxFramesPerPacket frames, Finish at most one
		// window's, and a leg's lead is at most maxPcapGap.
		lead := int(maxPcapGap / timeline.FrameDur)
		if bound := lead + (st.RTP+1)*timeline.MaxFramesPerPacket; rec.Len() > bound {
			t.Fatalf("%d frames from %d packets, bound %d", rec.Len(), st.RTP, bound)
		}
		for _, leg := range rec.Frames {
			if len(leg) != rec.Len() {
				t.Fatalf("legs differ in length")
			}
			for _, p := range leg {
				if len(p) != g711Rate/50 {
					t.Fatalf("frame of %d bytes", len(p))
				}
			}
		}
	})
}

func FuzzParseRTP(f *testing.F) {
	f.Add(rtpPacket(0, 1, 2, 3, fill(160, 1)))
	f.Add([]byte{0xB1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 5})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, p, ok := parseRTP(b)
		if ok && len(p) > len(b)-12 {
			t.Fatalf("payload %d bytes from a %d-byte packet", len(p), len(b))
		}
	})
}
