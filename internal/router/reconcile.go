package router

import (
	"encoding/json"
	"time"

	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
)

// Reconciliation is the reverse of the orphan sweep: the orphan sweep releases calls that a worker
// holds and no live ingest owns; reconciliation finds calls that a live ingest lists on a worker
// that does not hold them (dead, unknown, or alive without the call: it idled out or was reaped
// while the ingest was silent, or a bcast.down was lost) and tells the owning ingest, on
// ingest.<id>.place, every sweep until the ingest's heartbeat shows the call at a newer epoch on
// workers that hold it. Each step repairs the loss of the one before: a lost notice is repeated
// at the next sweep, a lost heartbeat is followed by the next one, and the ingest ignores a notice
// for an epoch it has left behind; one that comes while it is re-placing the call already wakes
// that re-placement (it tries again at once) rather than starting another.

// strandKey is one placement an ingest lists at an epoch.
type strandKey struct {
	id     session.ID
	ingest string
	worker string
	epoch  uint32
}

// notice is a Migrate for one ingest.
type notice struct {
	ingest string
	msg    wire.Migrate
}

// reconcile returns the notices to send this sweep; held maps (call, worker) to the newest epoch
// the worker's heartbeat holds the call at. Must hold r.mu.
func (r *Router) reconcile(now time.Time, held map[orphanKey]uint32) []notice {
	var out []notice
	seen := map[strandKey]bool{}
	for iid := range r.ingests {
		_, stalled := r.silent[iid]
		calls, known := r.ingestCalls(iid)
		if !known {
			continue // what it lists is not known complete: a missing call would be no news
		}
		for id, c := range calls {
			for _, p := range c.Placements {
				if e, ok := held[orphanKey{id, p.Worker}]; ok && e >= c.Epoch {
					continue
				}
				w := r.workers[p.Worker]
				var listed time.Time // when the worker's call list last came
				if w != nil {
					s := r.wstate[p.Worker]
					if s == nil || !s.known {
						continue // its call list is not known complete: what it holds is unknown
					}
					listed = s.seen
				}
				key := strandKey{id, iid, p.Worker, c.Epoch}
				seen[key] = true
				since, ok := r.strands[key]
				if !ok {
					r.strands[key] = now
					since = now
				}
				// A call this router reaped itself is known not to be held: no grace. Otherwise the
				// worker's heartbeat may predate the offer it accepted, so the mismatch must last.
				// A live worker must also have sent a call list since the mismatch was first seen: a
				// router reading them late (they come on a subscription of their own, behind its
				// liveness) does not take its own delay for a lost call.
				_, reaped := r.reaped[orphanKey{id, p.Worker}]
				if !reaped && (now.Sub(since) < r.cfg.ReconcileGrace || w != nil && !listed.After(since)) {
					continue
				}
				reason := wire.ReasonReconcile
				switch {
				case reaped:
					reason = wire.ReasonIngestStall
				case w == nil:
					reason = wire.ReasonWorkerDown
				case stalled:
					reason = wire.ReasonIngestStall
				}
				out = append(out, notice{iid, wire.Migrate{V: wire.V, Tenant: id.Tenant, Call: id.Call, Epoch: c.Epoch,
					Worker: p.Worker, Reason: reason, Progress: r.lost[lostKey{id, p.Pool}].progress}})
				break // one placement per call and sweep: the re-placement keeps the others
			}
		}
	}
	for k := range r.strands {
		if !seen[k] {
			delete(r.strands, k)
		}
	}
	return out
}

// notify publishes the notices. They carry no reply subject: the next sweep is the retry.
func (r *Router) notify(notices []notice) {
	for _, n := range notices {
		r.m.reconciled.WithLabelValues(n.msg.Reason).Inc()
		r.log.Warn().Str("tenant", n.msg.Tenant).Str("call", n.msg.Call).Str("ingest_id", n.ingest).Str("worker_id", n.msg.Worker).
			Uint32("epoch", n.msg.Epoch).Str("reason", n.msg.Reason).Msg("placement stranded; telling its ingest")
		if data, err := json.Marshal(n.msg); err == nil {
			_ = r.nc.Publish(subjects.IngestVerb(n.ingest, subjects.IngestVerbPlace), data)
		}
	}
}
