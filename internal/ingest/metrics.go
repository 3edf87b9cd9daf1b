package ingest

import (
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	calls        prometheus.Gauge
	starts       *prometheus.CounterVec // result
	ended        *prometheus.CounterVec // reason
	frames       *prometheus.CounterVec // result
	replacements *prometheus.CounterVec // reason
	replays      prometheus.Counter
	placeRetries prometheus.Counter
	absences     prometheus.Counter
	badRequests  *prometheus.CounterVec // verb
	pauses       *prometheus.CounterVec // event: paused, resumed, expired

	published, publishErr, badFrame prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		calls:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "callrouter_ingest_calls", Help: "Calls owned by this ingest node."}),
		starts:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_ingest_call_starts_total", Help: "New calls by placement result."}, []string{"result"}),
		ended:        prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_ingest_calls_ended_total", Help: "Calls ended by reason."}, []string{"reason"}),
		frames:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_ingest_frames_total", Help: "Frames by result."}, []string{"result"}),
		replacements: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_ingest_replacements_total", Help: "Re-placements by reason."}, []string{"reason"}),
		replays:      prometheus.NewCounter(prometheus.CounterOpts{Name: "callrouter_ingest_replays_total", Help: "Replay requests served."}),
		placeRetries: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrouter_ingest_place_retries_total", Help: "New-call placements retried after a refusal or an unanswered request."}),
		absences:     prometheus.NewCounter(prometheus.CounterOpts{Name: "callrouter_ingest_absences_total", Help: "Returns from an absence longer than -stranded-after (NATS cut off, or the process stopped), after which every call was re-placed."}),
		badRequests:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_ingest_bad_requests_total", Help: "Requests refused as malformed or out of bounds, by verb."}, []string{"verb"}),
		pauses:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_ingest_pauses_total", Help: "Secure pause changes of calls, by event: paused (a call began to be withheld: its first hold), resumed (its last hold lifted, by request or by -max-pause), expired (one source's hold, operator or stream, lifted by -max-pause; the call stays paused while the other source holds)."}, []string{"event"}),
	}
	m.published = m.frames.WithLabelValues("published")
	m.publishErr = m.frames.WithLabelValues("publish_error")
	m.badFrame = m.frames.WithLabelValues("bad")
	reg.MustRegister(m.calls, m.starts, m.ended, m.frames, m.replacements, m.replays, m.placeRetries, m.absences, m.badRequests, m.pauses)
	return m
}

// replaceReasons are the re-placement reasons senders use (worker: rebalance, drain, fenced;
// router: worker_down, reconcile, ingest_stall); the reason arrives in a message, so any other
// value is counted as "other" and cannot grow the label set.
var replaceReasons = map[string]bool{"rebalance": true, "drain": true, wire.ReasonFenced: true,
	wire.ReasonWorkerDown: true, wire.ReasonReconcile: true, wire.ReasonIngestStall: true}

func replaceReasonLabel(reason string) string {
	if replaceReasons[reason] {
		return reason
	}
	return "other"
}
