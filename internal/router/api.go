package router

import (
	"encoding/json"
	"sort"
	"strings"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

// API verbs on router.api.<verb>.
const (
	VerbCalls   = "calls"
	VerbCall    = "call"
	VerbWorkers = "workers"
	VerbPause   = "pause"
)

func (r *Router) onAPI(m *nats.Msg) {
	if len(m.Data) > wire.MaxControlBytes {
		bus.Respond(m, wire.Fail(wire.CodeBadRequest, "request too large"))
		return
	}
	verb := strings.TrimPrefix(m.Subject, subjects.APIPrefix)
	switch verb {
	case VerbCalls:
		bus.Respond(m, wire.CallsReply{Reply: wire.OK(), Calls: r.Calls()})
	case VerbCall:
		var q wire.CallQuery
		if err := json.Unmarshal(m.Data, &q); err != nil {
			bus.Respond(m, wire.CallReply{Reply: wire.Fail(wire.CodeBadRequest, `want {"v":1,"tenant":...,"call":...}`)})
			return
		}
		for _, c := range r.Calls() {
			if c.Tenant == q.Tenant && c.Call == q.Call {
				bus.Respond(m, wire.CallReply{Reply: wire.OK(), Call: &c})
				return
			}
		}
		bus.Respond(m, wire.CallReply{Reply: wire.Fail(wire.CodeUnknown, "no ingest owns "+q.Tenant+"/"+q.Call)})
	case VerbWorkers:
		bus.Respond(m, wire.WorkersReply{Reply: wire.OK(), Workers: r.Workers()})
	case VerbPause:
		r.forwardPause(m)
	default:
		if !r.onOpsAPI(m, verb) {
			bus.Respond(m, wire.Fail(wire.CodeBadRequest, "unknown verb; known: calls, call, workers, ingests, history, pause"))
		}
	}
}

// Calls returns every call some live ingest owns, with the progress its workers report.
func (r *Router) Calls() []wire.CallView {
	r.mu.Lock()
	defer r.mu.Unlock()
	progress := map[session.ID][]session.LegSeq{}
	for _, w := range r.workers {
		for _, c := range r.workerCalls(w) {
			progress[session.ID{Tenant: c.Tenant, Call: c.Call}] = c.Progress
		}
	}
	var out []wire.CallView
	for iid, in := range r.ingests {
		for id, c := range r.ingestCalls(in) {
			out = append(out, wire.CallView{Tenant: id.Tenant, Call: id.Call, Epoch: c.Epoch, Ingest: iid, Placements: c.Placements, Progress: progress[id], Paused: c.Paused})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Tenant != out[j].Tenant {
			return out[i].Tenant < out[j].Tenant
		}
		return out[i].Call < out[j].Call
	})
	return out
}

// forwardPause serves router.api.pause: it finds the ingest that owns the call (from ingest
// heartbeats) and forwards the wire.PauseRequest to ingest.<id>.pause with the asker's reply
// subject, so the owner answers the asker directly and no router handler waits on an ingest.
func (r *Router) forwardPause(m *nats.Msg) {
	var req wire.PauseRequest
	if err := json.Unmarshal(m.Data, &req); err != nil {
		bus.Respond(m, wire.PauseReply{Reply: wire.Fail(wire.CodeBadRequest, `want {"v":1,"tenant":...,"call":...,"paused":true|false}`)})
		return
	}
	if err := req.Check(); err != nil {
		bus.Respond(m, wire.PauseReply{Reply: wire.Fail(wire.CodeBadRequest, err.Error())})
		return
	}
	id := session.ID{Tenant: req.Tenant, Call: req.Call}
	owner := ""
	r.mu.Lock()
	for iid, in := range r.ingests {
		if _, ok := r.ingestCalls(in)[id]; ok {
			owner = iid
			break
		}
	}
	r.mu.Unlock()
	if owner == "" || m.Reply == "" {
		bus.Respond(m, wire.PauseReply{Reply: wire.Fail(wire.CodeUnknown, "no ingest owns "+req.Tenant+"/"+req.Call)})
		return
	}
	if err := r.nc.PublishRequest(subjects.IngestVerb(owner, subjects.IngestVerbPause), m.Reply, m.Data); err != nil {
		bus.Respond(m, wire.PauseReply{Reply: wire.Fail(wire.CodeInternal, err.Error())})
	}
}
