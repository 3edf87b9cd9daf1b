package worker

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	calls      prometheus.Gauge
	offers     *prometheus.CounterVec // result
	frames     *prometheus.CounterVec // result: processed, duplicate, old_epoch, bad, jump_held, replayed, paused
	drops      *prometheus.CounterVec // reason: backpressure, stale
	lost       *prometheus.CounterVec // cause
	ended      *prometheus.CounterVec // reason
	lag        prometheus.Gauge
	delay      prometheus.Histogram // live frames' excess delay (what lag averages)
	subs       prometheus.Gauge
	reapedSubs prometheus.Counter
	replays    *prometheus.CounterVec // result
	panics     prometheus.Counter     // calls ended by a panic on their goroutine
	resyncs    prometheus.Counter     // legs re-anchored after a forward sequence jump

	// Per-frame counters, resolved once so the frame path does no label lookups.
	processed, replayed, duplicate, oldEpoch, bad, jumpHeld, paused, dropBackpressure, dropStale prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		calls:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "callrouter_worker_calls", Help: "Calls held by this worker."}),
		offers:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_worker_offers_total", Help: "Placement offers by result."}, []string{"result"}),
		frames:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_worker_frames_total", Help: "Frames by outcome: processed (handed to the processors), paused (withheld by a secure pause, and the ones missing between two paused frames), replayed (from ingest's ring; also counted processed or paused), duplicate, old_epoch (from an earlier placement of the call), bad (did not parse), jump_held (dropped after a forward sequence jump real time does not explain, until a second frame confirms it)."}, []string{"result"}),
		drops:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_worker_dropped_frames_total", Help: "Frames the worker dropped before processing, by reason: backpressure (the call's queue was full; the oldest go), stale (older than -max-frame-age)."}, []string{"reason"}),
		lost:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_worker_lost_frames_total", Help: "Frames never processed (sequence gaps), by cause; frames missing during a secure pause are not lost (callrouter_worker_frames_total{result=\"paused\"})."}, []string{"cause"}),
		ended:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_worker_calls_ended_total", Help: "Calls this worker stopped holding, by reason."}, []string{"reason"}),
		lag:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "callrouter_worker_lag_seconds", Help: "Worst per-call processing lag (capture to processing)."}),
		subs:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "callrouter_worker_subscriptions", Help: "Per-call NATS subscriptions held."}),
		reapedSubs: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrouter_worker_reaped_subscriptions_total", Help: "Per-call subscriptions removed by the idle reaper."}),
		replays:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_worker_replays_total", Help: "Replay requests to ingest by result."}, []string{"result"}),
		resyncs:    prometheus.NewCounter(prometheus.CounterOpts{Name: "callrouter_worker_resyncs_total", Help: "Legs re-anchored after a forward sequence jump larger than real time explains (the hole is a gap with cause resync)."}),
		panics:     prometheus.NewCounter(prometheus.CounterOpts{Name: "callrouter_worker_call_panics_total", Help: "Calls ended by a panic on their goroutine (a processor bug); callrouter_panics_total counts every recovered panic."}),
	}
	m.delay = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "callrouter_worker_frame_delay_seconds",
		Help:    "Live frames' delay from capture at ingest to processing here, beyond the call's best (so clock offsets between hosts cancel): the lag, per frame.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 13)})
	m.processed = m.frames.WithLabelValues("processed")
	m.replayed = m.frames.WithLabelValues("replayed")
	m.duplicate = m.frames.WithLabelValues("duplicate")
	m.oldEpoch = m.frames.WithLabelValues("old_epoch")
	m.bad = m.frames.WithLabelValues("bad")
	m.jumpHeld = m.frames.WithLabelValues("jump_held")
	m.paused = m.frames.WithLabelValues("paused")
	m.dropBackpressure = m.drops.WithLabelValues("backpressure")
	m.dropStale = m.drops.WithLabelValues("stale")
	reg.MustRegister(m.calls, m.offers, m.frames, m.drops, m.lost, m.ended, m.lag, m.delay, m.subs, m.reapedSubs, m.replays, m.panics, m.resyncs)
	return m
}
