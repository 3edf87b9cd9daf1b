package router

import (
	"encoding/json"
	"sort"
	"sync"

	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/prometheus/client_golang/prometheus"
)

// maxTenantLabels bounds the tenant label of the per-tenant metrics (per router): tenants past it
// are counted under otherTenant, so a flood of made-up tenants cannot blow up the series count.
const maxTenantLabels = 200

// otherTenant is the tenant label of everything past maxTenantLabels (not a valid subject
// token, so no real tenant has it).
const otherTenant = "_other_"

// tenantMetrics are the per-tenant series, for the dashboard's tenant rows. Every router replica
// hears every event, so each reports the whole cluster: aggregate across routers with max, not sum.
type tenantMetrics struct {
	events *prometheus.CounterVec // tenant, kind: start, placed, refused, replaced, end
	lost   *prometheus.CounterVec // tenant, cause: frames in gap events

	mu    sync.Mutex
	known map[string]bool
}

func newTenantMetrics(reg prometheus.Registerer) *tenantMetrics {
	t := &tenantMetrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_router_tenant_events_total",
			Help: "Call lifecycle events by tenant and kind (start, placed, refused, replaced, end), as every router hears them: aggregate with max across routers."}, []string{"tenant", "kind"}),
		lost: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrouter_router_tenant_lost_frames_total",
			Help: "Frames never processed, from the workers' gap events, by tenant and cause, as every router hears them: aggregate with max across routers."}, []string{"tenant", "cause"}),
		known: map[string]bool{},
	}
	reg.MustRegister(t.events, t.lost)
	return t
}

// label returns the tenant's label value, or otherTenant once maxTenantLabels are in use.
func (t *tenantMetrics) label(tenantTok string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.known[tenantTok] {
		return tenantTok
	}
	if len(t.known) >= maxTenantLabels {
		return otherTenant
	}
	t.known[tenantTok] = true
	return tenantTok
}

// gapCauses bounds the cause label to the documented gap causes.
var gapCauses = map[string]bool{"network_loss": true, "ingest_overload": true, "bus_loss": true, "bus_slow_consumer": true,
	"worker_backpressure": true, "stale": true, "replacement": true, "client_silence": true, "ingest_stall": true, "resync": true}

// observe counts one event heard on events.<tenant>.<call>.<kind>.
func (t *tenantMetrics) observe(tenantTok, kind string, data json.RawMessage) {
	switch kind {
	case "start", "placed", "refused", "replaced", "end":
		t.events.WithLabelValues(t.label(tenantTok), kind).Inc()
	case "gap":
		var g struct {
			From  int64  `json:"from"`
			To    int64  `json:"to"`
			Cause string `json:"cause"`
		}
		if json.Unmarshal(data, &g) != nil || g.To < g.From || g.To-g.From >= 1<<32 {
			return
		}
		if g.Cause == "paused" { // proc.CausePaused: withheld by a secure pause, not lost
			return
		}
		if !gapCauses[g.Cause] {
			g.Cause = "other"
		}
		t.lost.WithLabelValues(t.label(tenantTok), g.Cause).Add(float64(g.To - g.From + 1))
	}
}

// tenantCalls reports, on each scrape, the calls each tenant has in progress as the live ingest
// nodes' heartbeats list them (the busiest maxTenantLabels tenants by name, the rest summed).
type tenantCalls struct{ r *Router }

var tenantCallsDesc = prometheus.NewDesc("callrouter_router_tenant_calls",
	"Calls in progress by tenant, from the ingest nodes' heartbeats (every router reports all: aggregate with max).", []string{"tenant"}, nil)

func (tenantCalls) Describe(ch chan<- *prometheus.Desc) { ch <- tenantCallsDesc }

func (c tenantCalls) Collect(ch chan<- prometheus.Metric) {
	counts := map[string]int{}
	c.r.mu.Lock()
	for iid := range c.r.ingests {
		calls, _ := c.r.ingestCalls(iid)
		for id := range calls {
			counts[subjects.Encode(id.Tenant)]++
		}
	}
	c.r.mu.Unlock()
	type tc struct {
		t string
		n int
	}
	all := make([]tc, 0, len(counts))
	for t, n := range counts {
		all = append(all, tc{t, n})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].n > all[j].n || all[i].n == all[j].n && all[i].t < all[j].t })
	other := 0
	for i, x := range all {
		if i >= maxTenantLabels {
			other += x.n
			continue
		}
		ch <- prometheus.MustNewConstMetric(tenantCallsDesc, prometheus.GaugeValue, float64(x.n), x.t)
	}
	if other > 0 {
		ch <- prometheus.MustNewConstMetric(tenantCallsDesc, prometheus.GaugeValue, float64(other), otherTenant)
	}
}
