package whip

import (
	"math/rand/v2"
	"time"

	"github.com/pion/rtcp"
)

// reportInterval is how often a session sends an RTCP receiver report while RTP arrives.
const reportInterval = time.Second

// receiverReports keeps the reception statistics of one RTP stream (RFC 3550 6.4.1, A.3, A.8)
// from the packets the media loop reads anyway, and builds the receiver reports that tell the
// sender its loss and jitter: a browser feeds the loss into Opus (in-band FEC) and shows both in
// getStats. It replaces pion's receiver-report interceptor, which cost a second RTP header parse,
// a map of attributes per packet, a lock and a ticker goroutine per session. Its reports carry no
// round trip (LSR and DLSR 0), as pion's did here: nothing reads the sender's reports.
type receiverReports struct {
	self, ssrc uint32
	clock      float64 // RTP clock ticks per nanosecond

	started  bool
	base     uint32 // extended sequence number of the first packet
	maxSeq   uint16
	cycles   uint32 // sequence number wraps << 16
	received uint32
	// at the last report
	expectedPrior, receivedPrior uint32

	lastTS      uint32
	lastArrival int64
	jitter      float64 // in RTP ticks

	next int64 // when the next report is due (Unix ns)
}

func newReceiverReports(ssrc, clockRate uint32) *receiverReports {
	return &receiverReports{self: rand.Uint32(), ssrc: ssrc, clock: float64(clockRate) / float64(time.Second)}
}

// packet counts one received packet at now (Unix ns).
func (r *receiverReports) packet(seq uint16, ts uint32, now int64) {
	r.received++
	if !r.started {
		r.started, r.base, r.maxSeq, r.lastTS, r.lastArrival = true, uint32(seq), seq, ts, now
		r.next = now + int64(reportInterval)
		return
	}
	if d := seq - r.maxSeq; d > 0 && d < 1<<15 { // in order, maybe with a gap
		if seq < r.maxSeq {
			r.cycles += 1 << 16
		}
		r.maxSeq = seq
	}
	// Interarrival jitter (RFC 3550 A.8), against the previous packet in arrival order.
	d := float64(now-r.lastArrival)*r.clock - float64(int32(ts-r.lastTS))
	if d < 0 {
		d = -d
	}
	r.jitter += (d - r.jitter) / 16
	r.lastTS, r.lastArrival = ts, now
}

// due reports whether a report should be sent at now.
func (r *receiverReports) due(now int64) bool { return r.started && now >= r.next }

// report builds the report due at now and starts the next interval.
func (r *receiverReports) report(now int64) *rtcp.ReceiverReport {
	r.next = now + int64(reportInterval)
	expected := r.cycles + uint32(r.maxSeq) - r.base + 1
	lost := int64(expected) - int64(r.received) // negative with duplicates
	expInterval := expected - r.expectedPrior
	recvInterval := r.received - r.receivedPrior
	r.expectedPrior, r.receivedPrior = expected, r.received
	var fraction uint8
	if lostInterval := int64(expInterval) - int64(recvInterval); expInterval > 0 && lostInterval > 0 {
		fraction = uint8(min(255, lostInterval<<8/int64(expInterval)))
	}
	lost = max(0, min(lost, 0x7fffff))
	return &rtcp.ReceiverReport{SSRC: r.self, Reports: []rtcp.ReceptionReport{{
		SSRC: r.ssrc, FractionLost: fraction, TotalLost: uint32(lost),
		LastSequenceNumber: r.cycles | uint32(r.maxSeq), Jitter: uint32(r.jitter),
	}}}
}
