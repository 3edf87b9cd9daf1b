package loadtest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/timeline"
)

// ErrPcap means a capture file is not a classic pcap file this package understands.
var ErrPcap = errors.New("loadtest: unsupported pcap")

// Link types of the classic pcap format (tcpdump.org/linktypes.html).
const (
	linkNull     = 0   // BSD loopback: 4-byte address family
	linkEthernet = 1   // Ethernet II, with 802.1Q tags
	linkRaw      = 101 // raw IPv4 or IPv6
	linkSLL      = 113 // Linux cooked capture v1
	linkIPv4     = 228 // raw IPv4
	linkIPv6     = 229 // raw IPv6
	linkSLL2     = 276 // Linux cooked capture v2
)

// G.711 RTP static payload types (RFC 3551 section 6) and the silence byte of each law.
const (
	ptPCMU = 0
	ptPCMA = 8
)

// g711Rate is the sample rate of G.711 RTP (one byte per sample).
const g711Rate = 8000

// Bounds that keep a hostile or odd capture from exhausting memory.
const (
	maxPcapGap    = 5 * time.Second     // the most silence one packet fills, and a stream's lead
	maxPcapStream = 4 * 3600 * g711Rate // 4 hours of audio per stream
	maxPcapLegs   = 8
	// pcapWindow is the reorder window, in media time: the cutter is not idled between
	// packets (capture times may be anything), so a missing packet is waited for until the
	// packets after it span this much.
	pcapWindow = 200 * time.Millisecond
)

// maxPcapFill bounds the gap-filled audio a stream may hold: ten times its real audio plus a
// minute, so that a small hostile file cannot expand into hours of audio; packets past it are
// skipped.
func maxPcapFill(real int64) int64 { return 10*real + 60*g711Rate }

// PcapStats says what a capture held besides the audio that was kept.
type PcapStats struct {
	Packets  int // records in the file
	RTP      int // G.711 RTP packets kept
	Skipped  int // packets that were not UDP/RTP G.711 (RTCP, telephone-event, other protocols)
	Streams  int // distinct SSRCs seen with G.711 audio
	Dropped  int // streams dropped because their codec differed from the first stream's or past the leg limit
	Reversed int // packets older than what was already laid out (late or duplicate), dropped
}

// rtpStream is one SSRC's audio, cut by a timeline.Cutter fed in capture order.
type rtpStream struct {
	ssrc    uint32
	pt      uint8
	firstAt time.Duration // capture time of its first packet, relative to the file's first packet
	cut     *timeline.Cutter
	real    int64 // bytes of audio the packets carried
	filled  int64 // bytes of frames that were gap-filled
	audio   []byte
}

func newRTPStream(ssrc uint32, pt uint8, firstAt time.Duration) *rtpStream {
	s := &rtpStream{ssrc: ssrc, pt: pt, firstAt: firstAt}
	s.cut = timeline.New(timeline.Config{Clock: g711Rate, Window: pcapWindow, MaxFill: maxPcapGap, Silence: silence(pt),
		Emit: func(p []byte, gapFilled bool) {
			s.audio = append(s.audio, p...)
			if gapFilled {
				s.filled += int64(len(p))
			}
		}})
	return s
}

// ParsePcap reads a classic pcap capture (microsecond or nanosecond, either byte order) of RTP
// over UDP over IPv4 or IPv6, keeps G.711 (PCMU or PCMA) streams, one leg per SSRC in order of
// appearance (legs limits how many; 0 keeps up to 8), cuts each stream into 20 ms frames by the
// rules of package timeline (any packet time, reordering, lost packets and silence filled,
// jumps re-anchored) with capture times as arrival times, aligns the streams by capture time,
// and returns the recording.
func ParsePcap(b []byte, legs int) (*filesrc.Recording, error) {
	r, _, err := parsePcap(b, legs)
	return r, err
}

// ParsePcapStats is ParsePcap that also reports what was skipped.
func ParsePcapStats(b []byte, legs int) (*filesrc.Recording, PcapStats, error) {
	return parsePcap(b, legs)
}

func parsePcap(b []byte, legs int) (*filesrc.Recording, PcapStats, error) {
	var st PcapStats
	if legs <= 0 || legs > maxPcapLegs {
		legs = maxPcapLegs
	}
	if len(b) < 24 {
		return nil, st, fmt.Errorf("%w: short file header", ErrPcap)
	}
	var bo binary.ByteOrder
	nanos := false
	switch m := binary.LittleEndian.Uint32(b); m {
	case 0xa1b2c3d4, 0xa1b23c4d:
		bo, nanos = binary.LittleEndian, m == 0xa1b23c4d
	case 0xd4c3b2a1, 0x4d3cb2a1:
		bo, nanos = binary.BigEndian, m == 0x4d3cb2a1
	default:
		return nil, st, fmt.Errorf("%w: magic %#08x is not classic pcap (pcapng is not supported; convert with editcap -F pcap)", ErrPcap, m)
	}
	link := bo.Uint32(b[20:]) & 0x0FFFFFFF
	switch link {
	case linkNull, linkEthernet, linkRaw, linkSLL, linkIPv4, linkIPv6, linkSLL2:
	default:
		return nil, st, fmt.Errorf("%w: link type %d", ErrPcap, link)
	}
	var (
		streams []*rtpStream
		t0      time.Duration
		haveT0  bool
	)
	for p := 24; p+16 <= len(b); {
		sec, frac := bo.Uint32(b[p:]), bo.Uint32(b[p+4:])
		incl := int(bo.Uint32(b[p+8:]))
		p += 16
		if incl < 0 || incl > len(b)-p {
			break // truncated last record
		}
		pkt := b[p : p+incl]
		p += incl
		st.Packets++
		ts := time.Duration(sec) * time.Second
		if nanos {
			ts += time.Duration(frac)
		} else {
			ts += time.Duration(frac) * time.Microsecond
		}
		if !haveT0 {
			t0, haveT0 = ts, true
		}
		payload, ok := udpPayload(link, pkt)
		if !ok {
			st.Skipped++
			continue
		}
		h, audio, ok := parseRTP(payload)
		if !ok || (h.pt != ptPCMU && h.pt != ptPCMA) {
			st.Skipped++
			continue
		}
		s := findStream(streams, h.ssrc)
		if s == nil {
			st.Streams++
			if len(streams) >= legs || (len(streams) > 0 && streams[0].pt != h.pt) {
				st.Dropped++
				st.Skipped++
				continue
			}
			s = newRTPStream(h.ssrc, h.pt, ts-t0)
			streams = append(streams, s)
		}
		if s.pt != h.pt || len(audio) == 0 || len(audio) > timeline.MaxPacket {
			st.Skipped++
			continue
		}
		if int64(len(s.audio))+int64(len(audio)) > maxPcapStream || s.filled > maxPcapFill(s.real) {
			st.Skipped++ // past the stream's length or silence budget
			continue
		}
		s.cut.Push(time.Unix(0, 0).Add(ts), h.seq, h.ts, h.ssrc, h.marker, audio)
		s.real += int64(len(audio))
		st.RTP++
	}
	if len(streams) == 0 {
		return nil, st, fmt.Errorf("%w: no G.711 RTP stream found (%d packets)", ErrPcap, st.Packets)
	}
	for _, s := range streams {
		s.cut.Finish()
		st.Reversed += int(s.cut.Stats.Late + s.cut.Stats.Dups)
	}
	return streamsToRecording(streams), st, nil
}

func findStream(ss []*rtpStream, ssrc uint32) *rtpStream {
	for _, s := range ss {
		if s.ssrc == ssrc {
			return s
		}
	}
	return nil
}

func silence(pt uint8) byte {
	if pt == ptPCMA {
		return 0xD5
	}
	return 0xFF
}

// streamsToRecording aligns the streams by the capture time of their first packet, pads them to
// one length and cuts them into 20 ms frames.
func streamsToRecording(ss []*rtpStream) *filesrc.Recording {
	codec := frame.CodecPCMU
	if ss[0].pt == ptPCMA {
		codec = frame.CodecPCMA
	}
	sil := silence(ss[0].pt)
	const size = g711Rate / 50
	chans := make([][]byte, len(ss))
	longest := 0
	for i, s := range ss {
		lead := max(0, min(int(s.firstAt.Seconds()*g711Rate), int(maxPcapGap.Seconds()*g711Rate)))
		ch := make([]byte, 0, lead+len(s.audio))
		for j := 0; j < lead; j++ {
			ch = append(ch, sil)
		}
		chans[i] = append(ch, s.audio...)
		longest = max(longest, len(chans[i]))
	}
	frames := (longest + size - 1) / size
	r := &filesrc.Recording{Codec: codec, Rate: g711Rate, Frames: make([][][]byte, len(ss))}
	for i, ch := range chans {
		r.Frames[i] = make([][]byte, frames)
		for f := 0; f < frames; f++ {
			p := make([]byte, size)
			n := 0
			if f*size < len(ch) {
				n = copy(p, ch[f*size:])
			}
			for k := n; k < size; k++ {
				p[k] = sil
			}
			r.Frames[i][f] = p
		}
	}
	return r
}

// udpPayload strips the link, IP and UDP headers; ok is false for anything but unfragmented UDP.
func udpPayload(link uint32, pkt []byte) ([]byte, bool) {
	var ipv int // 4 or 6; 0 means read the version nibble
	switch link {
	case linkNull:
		if len(pkt) < 4 {
			return nil, false
		}
		pkt = pkt[4:]
	case linkEthernet:
		if len(pkt) < 14 {
			return nil, false
		}
		et := binary.BigEndian.Uint16(pkt[12:])
		pkt = pkt[14:]
		for et == 0x8100 || et == 0x88A8 { // 802.1Q / 802.1ad tags
			if len(pkt) < 4 {
				return nil, false
			}
			et = binary.BigEndian.Uint16(pkt[2:])
			pkt = pkt[4:]
		}
		switch et {
		case 0x0800:
			ipv = 4
		case 0x86DD:
			ipv = 6
		default:
			return nil, false
		}
	case linkSLL:
		if len(pkt) < 16 {
			return nil, false
		}
		pkt = pkt[16:]
	case linkSLL2:
		if len(pkt) < 20 {
			return nil, false
		}
		pkt = pkt[20:]
	case linkIPv4:
		ipv = 4
	case linkIPv6:
		ipv = 6
	}
	if len(pkt) < 1 {
		return nil, false
	}
	if ipv == 0 {
		ipv = int(pkt[0] >> 4)
	}
	var udp []byte
	switch ipv {
	case 4:
		if len(pkt) < 20 || pkt[0]>>4 != 4 {
			return nil, false
		}
		ihl := int(pkt[0]&0x0F) * 4
		total := int(binary.BigEndian.Uint16(pkt[2:]))
		if ihl < 20 || total < ihl || len(pkt) < ihl || pkt[9] != 17 {
			return nil, false
		}
		if binary.BigEndian.Uint16(pkt[6:])&0x3FFF != 0 { // more fragments or a fragment offset
			return nil, false
		}
		if total <= len(pkt) {
			pkt = pkt[:total] // drop Ethernet padding
		}
		udp = pkt[ihl:]
	case 6:
		if len(pkt) < 40 || pkt[0]>>4 != 6 || pkt[6] != 17 {
			return nil, false
		}
		plen := int(binary.BigEndian.Uint16(pkt[4:]))
		udp = pkt[40:]
		if plen <= len(udp) {
			udp = udp[:plen]
		}
	default:
		return nil, false
	}
	if len(udp) < 8 {
		return nil, false
	}
	ulen := int(binary.BigEndian.Uint16(udp[4:]))
	if ulen >= 8 && ulen <= len(udp) {
		udp = udp[:ulen]
	}
	return udp[8:], true
}

// rtpHeader is the part of an RTP header (RFC 3550 section 5.1) that matters here.
type rtpHeader struct {
	pt     uint8
	marker bool
	seq    uint16
	ts     uint32
	ssrc   uint32
}

// parseRTP parses an RTP packet and returns its payload without padding; ok is false for
// anything that is not RTP version 2 (including RTCP, RFC 5761 section 4).
func parseRTP(b []byte) (h rtpHeader, payload []byte, ok bool) {
	if len(b) < 12 || b[0]>>6 != 2 {
		return h, nil, false
	}
	if pt := b[1] & 0x7F; pt >= 72 && pt <= 76 { // RTCP SR/RR/SDES/BYE/APP as seen by an RTP parser
		return h, nil, false
	}
	h.pt, h.marker = b[1]&0x7F, b[1]&0x80 != 0
	h.seq = binary.BigEndian.Uint16(b[2:])
	h.ts = binary.BigEndian.Uint32(b[4:])
	h.ssrc = binary.BigEndian.Uint32(b[8:])
	n := 12 + 4*int(b[0]&0x0F)
	if len(b) < n {
		return h, nil, false
	}
	if b[0]&0x10 != 0 { // header extension (section 5.3.1)
		if len(b) < n+4 {
			return h, nil, false
		}
		n += 4 + 4*int(binary.BigEndian.Uint16(b[n+2:]))
		if len(b) < n {
			return h, nil, false
		}
	}
	end := len(b)
	if b[0]&0x20 != 0 { // padding: the last byte counts the padding bytes
		pad := int(b[end-1])
		if pad == 0 || end-pad < n {
			return h, nil, false
		}
		end -= pad
	}
	return h, b[n:end], true
}
