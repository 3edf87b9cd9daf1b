package ingest

import (
	"strconv"

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
		absences:     prometheus.NewCounter(prometheus.CounterOpts{Name: "callrouter_ingest_absences_total", Help: "Returns from an absence longer than -stranded-after (NATS cut off, or the process stopped), after which every call was re-placed; or of extra publishing connections alone, after which their calls were."}),
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
var replaceReasons = map[string]bool{wire.ReasonRebalance: true, wire.ReasonDrain: true, wire.ReasonFenced: true,
	wire.ReasonWorkerDown: true, wire.ReasonReconcile: true, wire.ReasonIngestStall: true}

func replaceReasonLabel(reason string) string {
	if replaceReasons[reason] {
		return reason
	}
	return "other"
}

var (
	pubConnectedDesc = prometheus.NewDesc("callrouter_ingest_publish_conn_connected",
		"1 while the publishing connection is up (conn 1 is the node's own, also in callrouter_nats_*; 2 and up are the -nats-publish-conns extra ones).", []string{"conn"}, nil)
	pubReconnectsDesc = prometheus.NewDesc("callrouter_ingest_publish_conn_reconnects_total", "Times the publishing connection reconnected.", []string{"conn"}, nil)
	pubMsgsDesc       = prometheus.NewDesc("callrouter_ingest_publish_conn_messages_total", "Messages published on the connection (frames, and its calls' events and releases).", []string{"conn"}, nil)
	pubBytesDesc      = prometheus.NewDesc("callrouter_ingest_publish_conn_bytes_total", "Payload bytes published on the connection.", []string{"conn"}, nil)
	pubCallsDesc      = prometheus.NewDesc("callrouter_ingest_publish_conn_calls", "Calls whose frames go on the connection.", []string{"conn"}, nil)
)

// pubMetrics reports each publishing connection's client-side statistics on each scrape,
// labelled by its index (conn="1" the node's own). The connections cannot share the
// callrouter_nats_* names: every binary registers those for its own connection without a label,
// and one registry holds one label set per name.
type pubMetrics struct{ n *Node }

func (pubMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{pubConnectedDesc, pubReconnectsDesc, pubMsgsDesc, pubBytesDesc, pubCallsDesc} {
		ch <- d
	}
}

func (m pubMetrics) Collect(ch chan<- prometheus.Metric) {
	n := m.n
	n.mu.Lock()
	pubs := n.pubs
	calls := make([]int, len(pubs))
	for i, p := range pubs {
		calls[i] = p.calls
	}
	n.mu.Unlock()
	for i, p := range pubs {
		conn := strconv.Itoa(i + 1)
		s := p.nc.Stats()
		up := 0.0
		if p.nc.IsConnected() {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(pubConnectedDesc, prometheus.GaugeValue, up, conn)
		ch <- prometheus.MustNewConstMetric(pubReconnectsDesc, prometheus.CounterValue, float64(s.Reconnects), conn)
		ch <- prometheus.MustNewConstMetric(pubMsgsDesc, prometheus.CounterValue, float64(s.OutMsgs), conn)
		ch <- prometheus.MustNewConstMetric(pubBytesDesc, prometheus.CounterValue, float64(s.OutBytes), conn)
		ch <- prometheus.MustNewConstMetric(pubCallsDesc, prometheus.GaugeValue, float64(calls[i]), conn)
	}
}
