package router

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

// onPlace runs each placement on its own goroutine, at most MaxInflight at once.
func (r *Router) onPlace(m *nats.Msg) {
	r.inflight <- struct{}{}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer func() { <-r.inflight }()
		start := time.Now()
		rep := r.place(m.Data)
		r.m.placeTime.Observe(time.Since(start).Seconds())
		bus.Respond(m, rep)
	}()
}

func (r *Router) place(data []byte) wire.PlaceReply {
	var req wire.PlaceRequest
	rep := wire.PlaceReply{Router: r.cfg.ID}
	refuse := func(code, reason string) wire.PlaceReply {
		rep.Reply = wire.Fail(code, reason)
		rep.RetryAfterMS = int(r.cfg.RetryAfter / time.Millisecond)
		r.m.placements.WithLabelValues("refused").Inc()
		r.m.refusals.WithLabelValues(code).Inc()
		return rep
	}
	if err := json.Unmarshal(data, &req); err != nil {
		return refuse(wire.CodeBadRequest, err.Error())
	}
	rep.Epoch = req.Epoch
	if err := req.Call.Validate(); err != nil {
		return refuse(wire.CodeBadRequest, err.Error())
	}
	if !subjects.Valid(req.Ingest) || len(req.Pools) == 0 || req.Epoch == 0 {
		return refuse(wire.CodeBadRequest, "place needs an ingest id, at least one pool and an epoch > 0")
	}
	log := r.log.With().Str("tenant", req.Call.Tenant).Str("call", req.Call.Call).Uint32("epoch", req.Epoch).Logger()
	var placed []wire.Placement
	for _, pool := range req.Pools {
		offer := wire.Offer{V: wire.V, Call: req.Call, Ingest: req.Ingest, Epoch: req.Epoch, Pool: pool, Router: r.cfg.ID,
			Resume: r.resume(&req, pool)}
		p, code, reason := r.placePool(&req, &offer)
		if p == nil {
			r.releaseAll(&req, placed)
			log.Info().Str("pool", pool).Str("code", code).Str("reason", reason).Msg("placement refused")
			r.event(req.Call.Tenant, req.Call.Call, req.Epoch, "refused", map[string]string{"pool": pool, "code": code, "reason": reason})
			return refuse(code, reason)
		}
		placed = append(placed, *p)
	}
	rep.Reply = wire.OK()
	rep.Placements = placed
	r.m.placements.WithLabelValues("placed").Inc()
	r.event(req.Call.Tenant, req.Call.Call, req.Epoch, "placed", map[string]any{"placements": placed, "reason": req.Reason})
	log.Debug().Any("placements", placed).Msg("placed")
	return rep
}

// resume says where the new worker of pool starts: as given by ingest, else (on a failover) from
// the last progress the old worker reported, else from the oldest frame in ingest's ring
// (session.FromRingStart).
func (r *Router) resume(req *wire.PlaceRequest, pool string) []session.LegSeq {
	if req.Resume != nil || req.Reason == "" || req.Reason == "new" {
		return req.Resume
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var best []session.LegSeq
	var bestEpoch uint32
	for _, w := range r.workers {
		if w.hb.Pool != pool {
			continue
		}
		for _, c := range r.workerCalls(w) {
			if c.Tenant == req.Call.Tenant && c.Call == req.Call.Call && c.Epoch < req.Epoch && c.Epoch >= bestEpoch {
				best, bestEpoch = c.Progress, c.Epoch
			}
		}
	}
	if best == nil {
		best = r.lastProgress(req.Call.ID, pool)
	}
	out := make([]session.LegSeq, len(req.Call.Legs))
	for i := range out {
		out[i] = session.LegSeq{Leg: uint8(i), Next: session.FromRingStart}
	}
	for _, ls := range best {
		if int(ls.Leg) < len(out) && ls.Next >= 0 {
			out[ls.Leg].Next = ls.Next
		}
	}
	return out
}

// placePool offers the call to the least-loaded eligible workers of one pool in turn.
func (r *Router) placePool(req *wire.PlaceRequest, offer *wire.Offer) (*wire.Placement, string, string) {
	tried := map[string]bool{}
	lastCode, lastReason := wire.CodeNoWorkers, fmt.Sprintf("no live worker in pool %q", offer.Pool)
	for attempt := 0; attempt < r.cfg.OfferAttempts; attempt++ {
		wid, code, reason := r.pick(req, offer.Pool, tried)
		if wid == "" {
			if attempt == 0 || code != wire.CodeNoWorkers {
				lastCode, lastReason = code, reason
			}
			break
		}
		tried[wid] = true
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.OfferTimeout)
		var or wire.OfferReply
		err := bus.Request(ctx, r.nc, subjects.WorkerVerb(wid, subjects.WorkerVerbOffer), offer, &or)
		cancel()
		switch {
		case err != nil:
			r.m.offers.WithLabelValues("error").Inc()
			r.unpend(wid)
			r.abandon(wid, req)
			lastCode, lastReason = wire.CodeNoCapacity, "offer to "+wid+": "+err.Error()
		case !or.OK:
			r.m.offers.WithLabelValues(or.Code).Inc()
			r.unpend(wid)
			lastCode, lastReason = wire.CodeNoCapacity, wid+": "+or.Reason
		default:
			r.m.offers.WithLabelValues("accepted").Inc()
			return &wire.Placement{Pool: offer.Pool, Worker: wid}, "", ""
		}
	}
	return nil, lastCode, lastReason
}

// pick chooses the kept worker if it is alive, else the eligible worker with the lowest load, and
// counts the offer against it until its next heartbeat.
func (r *Router) pick(req *wire.PlaceRequest, pool string, tried map[string]bool) (string, string, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, k := range req.Keep {
		if w := r.workers[k.Worker]; k.Pool == pool && w != nil && !tried[k.Worker] {
			w.pending++
			return k.Worker, "", ""
		}
	}
	type cand struct {
		id   string
		load float64
	}
	var cands []cand
	live := 0
	for id, w := range r.workers {
		if w.hb.Pool != pool {
			continue
		}
		live++
		if tried[id] || slices.Contains(req.Exclude, id) || !w.eligible() {
			continue
		}
		cands = append(cands, cand{id, float64(w.hb.Active+w.pending) / float64(w.hb.Capacity)})
	}
	if len(cands) == 0 {
		if live == 0 {
			return "", wire.CodeNoWorkers, fmt.Sprintf("no live worker in pool %q", pool)
		}
		return "", wire.CodeNoCapacity, fmt.Sprintf("all %d workers of pool %q are full, draining, lagging or excluded", live, pool)
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].load != cands[j].load {
			return cands[i].load < cands[j].load
		}
		return cands[i].id < cands[j].id
	})
	r.workers[cands[0].id].pending++
	return cands[0].id, "", ""
}

// abandon tells a worker whose answer never came to drop the call if it took it after all, so
// two workers never hold one call at one epoch. It stops silently (ReasonOfferAbandoned).
func (r *Router) abandon(wid string, req *wire.PlaceRequest) {
	if slices.ContainsFunc(req.Keep, func(p wire.Placement) bool { return p.Worker == wid }) {
		return // a kept worker holds the call anyway
	}
	rel := wire.Release{V: wire.V, Tenant: req.Call.Tenant, Call: req.Call.Call, Epoch: req.Epoch, Reason: wire.ReasonOfferAbandoned}
	if data, err := json.Marshal(rel); err == nil {
		_ = r.nc.Publish(subjects.WorkerVerb(wid, subjects.WorkerVerbRelease), data)
	}
}

func (r *Router) unpend(wid string) {
	r.mu.Lock()
	if w := r.workers[wid]; w != nil && w.pending > 0 {
		w.pending--
	}
	r.mu.Unlock()
}

// releaseAll undoes the placements already made for a call whose other pool was refused.
// Kept workers are left alone: they advanced their epoch in place and still serve the call at the
// epoch ingest keeps using.
func (r *Router) releaseAll(req *wire.PlaceRequest, placed []wire.Placement) {
	for _, p := range placed {
		if slices.Contains(req.Keep, p) {
			continue
		}
		rel := wire.Release{V: wire.V, Tenant: req.Call.Tenant, Call: req.Call.Call, Epoch: req.Epoch, Reason: "placement refused in another pool"}
		if data, err := json.Marshal(rel); err == nil {
			_ = r.nc.Publish(subjects.WorkerVerb(p.Worker, subjects.WorkerVerbRelease), data)
		}
	}
}
