package router

import (
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	placements *prometheus.CounterVec // result: placed, refused
	refusals   *prometheus.CounterVec // code
	offers     *prometheus.CounterVec // result
	placeTime  prometheus.Histogram
	workers    prometheus.Gauge
	ingests    prometheus.Gauge
	downs      *prometheus.CounterVec
	reaped     prometheus.Counter
	reconciled *prometheus.CounterVec // reason
	coldWaits  prometheus.Counter
	badHB      prometheus.Counter
	tenants    *tenantMetrics // per-tenant series (tenants.go)
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		placements: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_router_placements_total", Help: "Placement requests by result."}, []string{"result"}),
		refusals:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_router_refusals_total", Help: "Refused placements by code."}, []string{"code"}),
		offers:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_router_offers_total", Help: "Offers sent to workers by result."}, []string{"result"}),
		placeTime:  prometheus.NewHistogram(prometheus.HistogramOpts{Name: "callrouter_router_place_seconds", Help: "Time to answer a placement.", Buckets: prometheus.ExponentialBuckets(0.0002, 2, 14)}),
		workers:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "callrouter_router_workers", Help: "Live workers seen in heartbeats."}),
		ingests:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "callrouter_router_ingests", Help: "Live ingest nodes seen in heartbeats."}),
		downs:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_router_declared_down_total", Help: "Components declared down."}, []string{"component"}),
		reaped:     prometheus.NewCounter(prometheus.CounterOpts{Name: "callrouter_router_reaped_calls_total", Help: "Orphan calls released from workers."}),
		badHB:      prometheus.NewCounter(prometheus.CounterOpts{Name: "callrouter_router_bad_heartbeats_total", Help: "Heartbeats that did not parse or validate."}),
		reconciled: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_router_stranded_notices_total", Help: "Notices sent to ingests whose listed worker does not hold a call, by reason."}, []string{"reason"}),
		coldWaits:  prometheus.NewCounter(prometheus.CounterOpts{Name: "callrouter_router_cold_waits_total", Help: "Placements that waited for the first heartbeat round instead of being refused."}),
	}
	m.tenants = newTenantMetrics(reg)
	reg.MustRegister(m.placements, m.refusals, m.offers, m.placeTime, m.workers, m.ingests, m.downs, m.reaped, m.badHB, m.reconciled, m.coldWaits)
	return m
}

// offerCodeLabel bounds the result label of a refused offer to the codes a worker gives; the
// code arrives in a reply, so any other value is counted as "other".
func offerCodeLabel(code string) string {
	switch code {
	case wire.CodeFull, wire.CodeDraining, wire.CodeNoCapacity, wire.CodeBadRequest, wire.CodeStale, wire.CodeInternal:
		return code
	}
	return "other"
}
