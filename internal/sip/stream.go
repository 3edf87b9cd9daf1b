package sip

import (
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/pion/rtp"
	"github.com/pion/srtp/v3"
)

// codec is an audio codec callrouter accepts on SIP.
type codec struct {
	name    string
	enc     string // SDP encoding name
	pt      uint8  // static payload type
	clock   int    // RTP clock rate (G.722 keeps 8000, RFC 3551 section 4.5.2)
	rate    uint32 // sample rate of the decoded audio, for frame headers
	fc      frame.Codec
	silence byte
}

var codecByName = map[string]codec{
	"pcmu": {name: "pcmu", enc: "PCMU", pt: 0, clock: 8000, rate: 8000, fc: frame.CodecPCMU, silence: 0xFF},
	"pcma": {name: "pcma", enc: "PCMA", pt: 8, clock: 8000, rate: 8000, fc: frame.CodecPCMA, silence: 0xD5},
	"g722": {name: "g722", enc: "G722", pt: 9, clock: 8000, rate: 16000, fc: frame.CodecG722, silence: 0x00},
}

// transport is where a stream's packets come from: its own port (rtpConn: ports.go,
// rtpsock_*.go) or its place on the shared port (sharedEntry: shared.go).
type transport interface {
	localPort() int            // the port the SDP answer names
	rekey(from netip.AddrPort) // the stream's declared source changed (a re-INVITE)
	activate()                 // the stream's send callback is set: its packets may be handled
	serve(s *stream)           // reads into s until stop; a panic in s's handling is raised again
	stop()                     // ends serve; it may be called more than once
	release(p *portPool)       // gives the port back: into p's quarantine, or out of the shared table
}

// stream receives one negotiated RTP stream into one leg of a call.
type stream struct {
	tr       transport
	leg      int
	codec    codec
	audioPT  uint8
	eventPT  int // -1 without telephone-event
	check    string
	remote   atomic.Pointer[netip.AddrPort] // negotiated source; updated by re-INVITEs
	cut      *cutter
	dtmf     dtmfDetector
	lastRTP  atomic.Int64 // unix nanos of the last accepted packet
	idleDue  atomic.Int64 // monoNanos from which the cutter's idle has work; sweeps skip it before
	m        *metrics
	send     func(leg int, payload []byte, flags frame.Flags) error
	onDTMF   func(s *stream, e dtmfEvent, pos int64)
	pkt      rtp.Packet
	buf      [maxPacket + 64]byte
	sendErrs int
	emitted  atomic.Uint64 // frames emitted, readable from other goroutines
	hook     *func([]byte) // tests: runs on every packet (Server.packetHook)

	srtp atomic.Pointer[srtp.Context] // the offerer's SRTP key; nil for plain RTP
	key  *sdesKey                     // the key srtp was made from (callState.mu)
	hdr  rtp.Header
	dec  [maxPacket + 64]byte

	done     chan struct{}       // closed when the socket's reader has let go of the stream
	panicked atomic.Pointer[any] // what the stream's packet handling panicked with
}

func (s *stream) port() int { return s.tr.localPort() }

// setRemote takes the source the stream's SDP declared (at the offer and at re-INVITEs).
func (s *stream) setRemote(a netip.AddrPort) {
	s.remote.Store(&a)
	if s.tr != nil { // nil while the stream is built: its transport starts from the offer's source
		s.tr.rekey(a)
	}
}

// activate lets the transport hand packets to the stream once its send callback is set (a
// stream on its own port is read from run on; packets queue in its socket until then).
func (s *stream) activate() { s.tr.activate() }

// stop ends the stream's reading: run flushes and returns.
func (s *stream) stop() { s.tr.stop() }

// release gives the stream's port back: into quarantine in p, or out of the shared table.
func (s *stream) release(p *portPool) { s.tr.release(p) }

func (s *stream) sourceOK(from netip.AddrPort) bool {
	r := s.remote.Load()
	switch {
	case s.check == SourceCheckOff || r == nil:
		return true
	case s.check == SourceCheckIP:
		return r.Addr() == from.Addr().Unmap()
	}
	return r.Addr() == from.Addr().Unmap() && r.Port() == from.Port()
}

// run reads packets until the socket is closed, then flushes the last frame.
func (s *stream) run() {
	s.lastRTP.Store(time.Now().UnixNano())
	s.tr.serve(s)
	s.cut.finish()
	s.dtmf.flush()
	st := s.cut.stats()
	s.m.rtpDropped.WithLabelValues("late").Add(float64(st.Late))
	s.m.rtpDropped.WithLabelValues("duplicate").Add(float64(st.Dups))
	s.m.rtpLost.Add(float64(st.Lost))
	s.m.gapFilled.Add(float64(st.FramesFilled))
}

// handle processes one datagram that arrived at now from from.
func (s *stream) handle(now time.Time, from netip.AddrPort, raw []byte) {
	if s.hook != nil {
		(*s.hook)(raw)
	}
	if !s.sourceOK(from) {
		s.m.rtpDropped.WithLabelValues("source").Inc()
		return
	}
	s.accept(now, raw)
}

// accept processes a datagram from the stream's declared source (the shared port's table routes
// by it, so its packets come here directly).
func (s *stream) accept(now time.Time, raw []byte) {
	if ctx := s.srtp.Load(); ctx != nil {
		// RFC 3711 section 3.3: authenticate (and refuse replays), then decrypt; what comes out
		// is an RTP packet like any other.
		dec, err := ctx.DecryptRTP(s.dec[:0], raw, &s.hdr)
		if err != nil {
			s.m.rtpDropped.WithLabelValues("srtp").Inc()
			return
		}
		raw = dec
	}
	if err := s.pkt.Unmarshal(raw); err != nil || s.pkt.Version != 2 {
		s.m.rtpDropped.WithLabelValues("malformed").Inc()
		return
	}
	switch {
	case s.pkt.PayloadType == s.audioPT:
		s.lastRTP.Store(now.UnixNano())
		s.cut.push(now, s.pkt.SequenceNumber, s.pkt.Timestamp, s.pkt.SSRC, s.pkt.Marker, s.pkt.Payload)
		s.idleDue.Store(s.cut.idleDue())
	case int(s.pkt.PayloadType) == s.eventPT:
		s.lastRTP.Store(now.UnixNano())
		if !s.dtmf.push(s.pkt.Timestamp, s.pkt.SSRC, s.pkt.Payload) {
			s.m.rtpDropped.WithLabelValues("malformed").Inc()
		}
	case s.pkt.PayloadType == 13: // comfort noise (RFC 3389): the sender is silent
		s.lastRTP.Store(now.UnixNano())
	default:
		s.m.rtpDropped.WithLabelValues("payload_type").Inc()
		return
	}
	s.m.rtpPackets.Inc()
}

// idle runs the cutter's silence filling and reorder timeout once they are due; the 20 ms sweeps
// over all streams call it, and most streams, receiving a packet every 20 ms, are not due: they
// cost one atomic load.
func (s *stream) idle(now time.Time) {
	if monoNanos(now) < s.idleDue.Load() {
		return
	}
	s.cut.idle(now)
	s.idleDue.Store(s.cut.idleDue())
}

// emit is the cutter's frame callback.
func (s *stream) emit(p []byte, gap bool) {
	var f frame.Flags
	if gap {
		f = frame.FlagGapFilled
	}
	if err := s.send(s.leg, p, f); err != nil {
		s.sendErrs++
	}
	s.emitted.Add(1)
}

func netipAddrPort(a netip.Addr, port int) netip.AddrPort {
	return netip.AddrPortFrom(a.Unmap(), uint16(port))
}
