package whip

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	requests *prometheus.CounterVec // method, code
	ended    *prometheus.CounterVec // reason
	setup    prometheus.Histogram   // POST received → answer sent
	media    *prometheus.CounterVec // what: packets, lost, late, ...
	sse      prometheus.Gauge
	dropped  prometheus.Counter // events not delivered to a slow event-stream client
}

// newMetrics registers the endpoint's metrics; count returns the sessions in a state, read at
// scrape time.
func newMetrics(reg prometheus.Registerer, count func(state string) int) *metrics {
	for _, st := range []string{stateConnecting, stateConnected} {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "callrouter_whip_sessions", Help: "WHIP sessions by state.",
			ConstLabels: prometheus.Labels{"state": st}}, func() float64 { return float64(count(st)) }))
	}
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_whip_requests_total", Help: "WHIP HTTP requests by method and status code."}, []string{"method", "code"}),
		ended:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_whip_sessions_ended_total", Help: "WHIP sessions ended, by reason."}, []string{"reason"}),
		setup: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "callrouter_whip_setup_seconds", Help: "POST received to answer sent, including placement.",
			Buckets: prometheus.ExponentialBuckets(0.002, 2, 12)}),
		media:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_whip_media_total", Help: "RTP packets and 20 ms frames of ended WHIP calls, by what happened to them."}, []string{"what"}),
		sse:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "callrouter_whip_event_streams", Help: "Open call event streams (SSE)."}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrouter_whip_event_stream_dropped_total", Help: "Events not sent to a slow event-stream client (its queue was full)."}),
	}
	reg.MustRegister(m.requests, m.ended, m.setup, m.media, m.sse, m.dropped)
	return m
}

func (m *metrics) addStats(s *Stats) {
	for what, v := range map[string]uint64{"packets": s.Packets, "lost_packets": s.Lost, "late_packets": s.Late,
		"duplicate_packets": s.Duplicates, "reordered_packets": s.Reordered, "unsupported_packets": s.Unsupported,
		"frames": s.Frames, "filled_loss_frames": s.FilledLoss, "filled_silence_frames": s.FilledSilence,
		"skipped_frames": s.Skipped, "resyncs": s.Resyncs, "unpublished_frames": s.Unpublished} {
		m.media.WithLabelValues(what).Add(float64(v))
	}
}
