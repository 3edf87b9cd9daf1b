package sip

import (
	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests       *prometheus.CounterVec // method (methodLabel), code (chosen in code)
	calls          prometheus.Gauge
	ended          *prometheus.CounterVec // reason
	rtpPackets     prometheus.Counter
	rtpDropped     *prometheus.CounterVec // reason: source, srtp, malformed, payload_type, late, duplicate
	rtpLost        prometheus.Counter
	gapFilled      prometheus.Counter
	dtmf           prometheus.Counter
	malformed      prometheus.Counter
	strayResponses prometheus.Counter
	refused        *prometheus.CounterVec // reason: invite_rate, tcp_conns, tcp_source_conns, tcp_idle, tcp_slow
	answer         prometheus.Histogram   // INVITE received → 200 OK sent, placement included
	forbidden      *prometheus.CounterVec // reason: allow_list, cancel_source, dialog_source, dialog_user, tenant, user_tenant
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_sip_responses_total",
			Help: "SIP final responses sent, by request method (methods outside RFC 3261 and its extensions count as other) and status code."}, []string{"method", "code"}),
		calls: prometheus.NewGauge(prometheus.GaugeOpts{Name: "callrouter_sip_calls", Help: "SIP calls in progress."}),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_sip_calls_ended_total",
			Help: "SIP calls ended, by reason."}, []string{"reason"}),
		rtpPackets: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrouter_sip_rtp_packets_total", Help: "RTP packets accepted."}),
		rtpDropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_sip_rtp_dropped_total",
			Help: "RTP packets dropped, by reason (source: not from the declared or latched source, ssrc: a foreign SSRC on the shared port, srtp: failed SRTP authentication or a replay, malformed, payload_type, late, duplicate)."}, []string{"reason"}),
		rtpLost:   prometheus.NewCounter(prometheus.CounterOpts{Name: "callrouter_sip_rtp_lost_total", Help: "RTP packets given up on as lost (gap-filled)."}),
		gapFilled: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrouter_sip_gap_filled_frames_total", Help: "Frames gap-filled for loss or silence."}),
		dtmf:      prometheus.NewCounter(prometheus.CounterOpts{Name: "callrouter_sip_dtmf_events_total", Help: "RFC 4733 DTMF events published."}),
		malformed: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrouter_sip_malformed_total",
			Help: "SIP datagrams that could not be parsed (answered 400/416/505 when possible, else dropped)."}),
		strayResponses: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrouter_sip_stray_responses_total",
			Help: "SIP responses that matched no transaction (dropped)."}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_sip_refused_total",
			Help: "Messages and TCP connections the per-source limits refused, by reason (invite_rate: an INVITE over the source's rate, dropped over UDP, 503 over TCP; tcp_conns, tcp_source_conns: a connection past the bound, closed; tcp_idle, tcp_slow: a connection closed as idle or for a message that took too long)."},
			[]string{"reason"}),
		answer: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "callrouter_sip_answer_seconds",
			Help: "INVITE received to 200 OK sent, placement included.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
	}
	m.forbidden = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_sip_forbidden_total",
		Help: "SIP requests refused with 403 (ACKs and responses dropped), by reason: allow_list (source outside -sip-allow), cancel_source (a CANCEL not from its INVITE's hop), dialog_source (an in-dialog request not from the dialog's peer), dialog_user (an in-dialog request with another user's credentials), tenant (a tenant not allowed), user_tenant (a digest user calling for another tenant)."},
		[]string{"reason"})
	reg.MustRegister(m.forbidden)
	reg.MustRegister(m.requests, m.calls, m.ended, m.rtpPackets, m.rtpDropped, m.rtpLost, m.gapFilled, m.dtmf, m.malformed, m.strayResponses, m.refused, m.answer)
	return m
}

// methodLabel maps a request method to its label value: the methods of RFC 3261 and its
// extensions (knownMethods) as they are, any other name "other". A method name comes from the
// network, and every distinct label value is a new series kept until the process ends.
func methodLabel(m sip.RequestMethod) string {
	if knownMethods[string(m)] {
		return string(m)
	}
	return "other"
}
