package router

import (
	_ "embed"
	"encoding/json"
	"net/http"
	"sort"
	"time"

	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
)

// The live status page a router serves on its HTTP port (next to /metrics): the workers and
// ingests with their load and lag, calls per tenant, placements and refusals per minute, and a
// call's timeline when clicked. One self-contained HTML file (no external scripts or styles, so
// it works offline) polling two JSON endpoints every second.

//go:embed status.html
var statusHTML []byte

// maxStatusCalls bounds the calls listed in one overview (the tenants' counts cover all).
const maxStatusCalls = 200

// StatusOverview is the body of /status/api/overview.
type StatusOverview struct {
	Router     string            `json:"router"`
	Time       time.Time         `json:"time"`
	Workers    []wire.WorkerView `json:"workers"`
	Ingests    []wire.IngestView `json:"ingests"`
	Tenants    []TenantCalls     `json:"tenants"`
	PerMinute  []minuteCount     `json:"per_minute"` // placements and refusals, oldest minute first
	Calls      []wire.CallView   `json:"calls"`      // at most maxStatusCalls
	TotalCalls int               `json:"total_calls"`
}

// TenantCalls is one tenant's calls in progress.
type TenantCalls struct {
	Tenant string `json:"tenant"`
	Calls  int    `json:"calls"`
}

// Mount serves the status page under /status/ (cli mounts it on the router's -http server).
func (r *Router) Mount(mux *http.ServeMux) {
	mux.HandleFunc("GET /status/{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(statusHTML)
	})
	mux.HandleFunc("GET /status/api/overview", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, r.statusOverview())
	})
	mux.HandleFunc("GET /status/api/call", func(w http.ResponseWriter, req *http.Request) {
		tenant, call := req.URL.Query().Get("tenant"), req.URL.Query().Get("call")
		if tenant == "" || call == "" || len(tenant) > 1024 || len(call) > 1024 {
			writeJSON(w, http.StatusBadRequest, wire.Fail(wire.CodeBadRequest, "want ?tenant=…&call=…"))
			return
		}
		h, ok := r.hist.get(subjects.Encode(tenant), subjects.Encode(call))
		if !ok {
			writeJSON(w, http.StatusNotFound, wire.Fail(wire.CodeUnknown, "no events seen for "+tenant+"/"+call))
			return
		}
		writeJSON(w, http.StatusOK, h)
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (r *Router) statusOverview() StatusOverview {
	calls := r.Calls()
	o := StatusOverview{Router: r.cfg.ID, Time: time.Now().UTC(), Workers: r.Workers(), Ingests: r.Ingests(),
		PerMinute: r.hist.perMinute(time.Now()), TotalCalls: len(calls), Tenants: []TenantCalls{}}
	byTenant := map[string]int{}
	for _, c := range calls {
		byTenant[c.Tenant]++
	}
	for t, n := range byTenant {
		o.Tenants = append(o.Tenants, TenantCalls{t, n})
	}
	sort.Slice(o.Tenants, func(i, j int) bool {
		return o.Tenants[i].Calls > o.Tenants[j].Calls || o.Tenants[i].Calls == o.Tenants[j].Calls && o.Tenants[i].Tenant < o.Tenants[j].Tenant
	})
	if len(calls) > maxStatusCalls {
		calls = calls[:maxStatusCalls]
	}
	o.Calls = calls
	if o.Calls == nil {
		o.Calls = []wire.CallView{}
	}
	return o
}
