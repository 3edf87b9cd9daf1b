package router

import (
	"encoding/json"
	"slices"
	"sort"

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

// onAPI answers router.api.<verb> (operators: every call) and router.api.<tenant>.<verb> (one
// tenant's identity, whose NATS permissions allow only its own tenant token: it learns about its
// own calls only, and nothing about workers).
func (r *Router) onAPI(m *nats.Msg) {
	if len(m.Data) > wire.MaxControlBytes {
		bus.Respond(m, wire.Fail(wire.CodeBadRequest, "request too large"))
		return
	}
	tenant, verb, err := subjects.ParseAPI(m.Subject)
	if err != nil {
		bus.Respond(m, wire.Fail(wire.CodeBadRequest, "want router.api.<verb> or router.api.<tenant>.<verb>"))
		return
	}
	switch verb {
	case VerbCalls:
		calls := r.Calls()
		if tenant != "" {
			calls = slices.DeleteFunc(calls, func(c wire.CallView) bool { return c.Tenant != tenant })
		}
		bus.Respond(m, wire.CallsReply{Reply: wire.OK(), Calls: calls})
	case VerbCall:
		var q wire.CallQuery
		if err := json.Unmarshal(m.Data, &q); err != nil {
			bus.Respond(m, wire.CallReply{Reply: wire.Fail(wire.CodeBadRequest, `want {"v":1,"tenant":...,"call":...}`)})
			return
		}
		if tenant != "" {
			if q.Tenant != "" && q.Tenant != tenant {
				bus.Respond(m, wire.CallReply{Reply: wire.Fail(wire.CodeUnknown, "no ingest owns "+q.Tenant+"/"+q.Call)})
				return
			}
			q.Tenant = tenant
		}
		for _, c := range r.Calls() {
			if c.Tenant == q.Tenant && c.Call == q.Call {
				bus.Respond(m, wire.CallReply{Reply: wire.OK(), Call: &c})
				return
			}
		}
		bus.Respond(m, wire.CallReply{Reply: wire.Fail(wire.CodeUnknown, "no ingest owns "+q.Tenant+"/"+q.Call)})
	case VerbWorkers:
		if tenant != "" {
			bus.Respond(m, wire.Fail(wire.CodeBadRequest, "workers: operators only (router.api.workers)"))
			return
		}
		bus.Respond(m, wire.WorkersReply{Reply: wire.OK(), Workers: r.Workers()})
	case VerbPause:
		r.forwardPause(m, tenant)
	default:
		if tenant != "" {
			bus.Respond(m, wire.Fail(wire.CodeBadRequest, verb+": operators only (router.api."+verb+")"))
			return
		}
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
	for wid := range r.workers {
		calls, _ := r.workerCalls(wid)
		for id, c := range calls {
			progress[id] = c.Progress
		}
	}
	var out []wire.CallView
	for iid := range r.ingests {
		calls, _ := r.ingestCalls(iid)
		for id, c := range calls {
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
func (r *Router) forwardPause(m *nats.Msg, tenant string) {
	var req wire.PauseRequest
	if err := json.Unmarshal(m.Data, &req); err != nil {
		bus.Respond(m, wire.PauseReply{Reply: wire.Fail(wire.CodeBadRequest, `want {"v":1,"tenant":...,"call":...,"paused":true|false}`)})
		return
	}
	if err := req.Check(); err != nil {
		bus.Respond(m, wire.PauseReply{Reply: wire.Fail(wire.CodeBadRequest, err.Error())})
		return
	}
	if tenant != "" && req.Tenant != tenant { // a tenant's identity pauses its own calls only
		bus.Respond(m, wire.PauseReply{Reply: wire.Fail(wire.CodeUnknown, "no ingest owns "+req.Tenant+"/"+req.Call)})
		return
	}
	id := session.ID{Tenant: req.Tenant, Call: req.Call}
	owner := ""
	r.mu.Lock()
	for iid := range r.ingests {
		if calls, _ := r.ingestCalls(iid); calls != nil {
			if _, ok := calls[id]; ok {
				owner = iid
				break
			}
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
