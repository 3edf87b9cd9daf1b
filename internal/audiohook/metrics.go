package audiohook

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	sessions  prometheus.Gauge
	upgrades  *prometheus.CounterVec
	ended     *prometheus.CounterVec
	discarded prometheus.Counter
	paused    prometheus.Counter
	events    *prometheus.CounterVec
	clientErr *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{Name: "callrouter_audiohook_sessions",
			Help: "AudioHook sessions holding a slot (open or running)."}),
		upgrades: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_audiohook_upgrades_total",
			Help: "AudioHook WebSocket upgrade requests by result (ok, unauthorized, bad_request, unavailable, rate_limited)."}, []string{"result"}),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_audiohook_sessions_ended_total",
			Help: "AudioHook sessions ended, by reason."}, []string{"reason"}),
		discarded: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrouter_audiohook_discarded_seconds_total",
			Help: "Audio the clients reported discarded (gap-filled on the call's timeline)."}),
		paused: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrouter_audiohook_paused_seconds_total",
			Help: "Time AudioHook streams spent paused (no audio, not on the call's timeline)."}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_audiohook_events_total",
			Help: "Call events offered to AudioHook clients as event messages, by result (sent, dropped)."}, []string{"result"}),
		clientErr: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_audiohook_client_errors_total",
			Help: "AudioHook error messages received from clients, by code."}, []string{"code"}),
	}
	reg.MustRegister(m.sessions, m.upgrades, m.ended, m.discarded, m.paused, m.events, m.clientErr)
	return m
}

// clientErrCodes is the closed label set of client error codes (anything else counts as other).
var clientErrCodes = map[int]string{400: "400", 405: "405", 408: "408", 409: "409", 413: "413", 415: "415", 429: "429", 500: "500", 503: "503"}
