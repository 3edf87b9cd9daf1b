package twilio

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	sessions prometheus.Gauge
	upgrades *prometheus.CounterVec
	ended    *prometheus.CounterVec
	media    *prometheus.CounterVec
	dtmf     prometheus.Counter
	marks    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{Name: "callrouter_twilio_streams",
			Help: "Twilio media streams holding a slot."}),
		upgrades: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_twilio_upgrades_total",
			Help: "Twilio WebSocket upgrade requests by result (ok, bad_request, unavailable, rate_limited)."}, []string{"result"}),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_twilio_streams_ended_total",
			Help: "Twilio media streams ended, by reason."}, []string{"reason"}),
		media: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_twilio_media_total",
			Help: "Twilio media messages by result (ok, unknown_track, bad)."}, []string{"result"}),
		dtmf: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrouter_twilio_dtmf_total",
			Help: "Twilio dtmf messages published as dtmf events."}),
		marks: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrouter_twilio_marks_total",
			Help: "Twilio mark messages (echoes of played marks) published as mark events."}),
	}
	reg.MustRegister(m.sessions, m.upgrades, m.ended, m.media, m.dtmf, m.marks)
	return m
}
