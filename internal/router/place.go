package router

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/trace"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

// Bounds on a placement request, checked before any work.
const (
	maxPools   = 8
	maxExclude = 64
)

// onPlace runs each placement on its own goroutine, at most MaxInflight at once. Once the router
// is shutting down it starts none: the request goes unanswered and ingest retries another replica.
func (r *Router) onPlace(m *nats.Msg) {
	if len(m.Data) > wire.MaxControlBytes {
		bus.Respond(m, r.refuse(wire.CodeBadRequest, fmt.Sprintf("request of %d bytes; at most %d", len(m.Data), wire.MaxControlBytes)))
		return
	}
	r.inflight <- struct{}{}
	if !r.g.Go(func() {
		defer func() { <-r.inflight }()
		defer guard.Recover("router_place", r.log, nil)
		start := time.Now()
		ctx, span := trace.Start(trace.Extract(context.Background(), m.Header), "router.place", trace.Server, trace.String("callrouter.router", r.cfg.ID))
		rep := r.place(ctx, m.Data)
		if !rep.OK {
			trace.Fail(span, rep.Code+": "+rep.Reason)
		}
		span.End()
		r.m.placeTime.Observe(time.Since(start).Seconds())
		bus.Respond(m, rep)
	}) {
		<-r.inflight
	}
}

func (r *Router) refuse(code, reason string) wire.PlaceReply {
	r.m.placements.WithLabelValues("refused").Inc()
	r.m.refusals.WithLabelValues(code).Inc()
	return wire.PlaceReply{Router: r.cfg.ID, Reply: wire.Fail(code, reason), RetryAfterMS: int(r.cfg.RetryAfter / time.Millisecond)}
}

// checkPlace bounds a placement request's lists: pools are few and distinct, every worker and pool
// id is a valid token, resume has at most one entry per leg.
func checkPlace(req *wire.PlaceRequest) error {
	if !subjects.Valid(req.Ingest) || len(req.Pools) == 0 || req.Epoch == 0 {
		return errors.New("place needs an ingest id, at least one pool and an epoch > 0")
	}
	if len(req.Pools) > maxPools || len(req.Keep) > len(req.Pools) || len(req.Exclude) > maxExclude || len(req.Resume) > len(req.Call.Legs) {
		return fmt.Errorf("place takes at most %d pools, one kept worker per pool, %d excluded workers and one resume entry per leg", maxPools, maxExclude)
	}
	for i, p := range req.Pools {
		if !subjects.Valid(p) || slices.Contains(req.Pools[:i], p) {
			return fmt.Errorf("pool %q is not a valid token or is named twice", p)
		}
	}
	for _, k := range req.Keep {
		if !subjects.Valid(k.Worker) || !slices.Contains(req.Pools, k.Pool) {
			return fmt.Errorf("kept placement %s/%s is not valid", k.Pool, k.Worker)
		}
	}
	for _, w := range req.Exclude {
		if !subjects.Valid(w) {
			return fmt.Errorf("excluded worker %q is not a valid token", w)
		}
	}
	for _, ls := range req.Resume {
		if int(ls.Leg) >= len(req.Call.Legs) || ls.Next < session.FromRingStart {
			return fmt.Errorf("resume entry for leg %d at %d is out of range", ls.Leg, ls.Next)
		}
	}
	return nil
}

// place answers one placement request; ctx carries its span.
func (r *Router) place(ctx context.Context, data []byte) wire.PlaceReply {
	var req wire.PlaceRequest
	rep := wire.PlaceReply{Router: r.cfg.ID}
	refuse := func(code, reason string) wire.PlaceReply {
		out := r.refuse(code, reason)
		out.Epoch = req.Epoch
		return out
	}
	if err := json.Unmarshal(data, &req); err != nil {
		return refuse(wire.CodeBadRequest, err.Error())
	}
	rep.Epoch = req.Epoch
	if err := req.Call.Validate(); err != nil {
		return refuse(wire.CodeBadRequest, err.Error())
	}
	if err := checkPlace(&req); err != nil {
		return refuse(wire.CodeBadRequest, err.Error())
	}
	log := r.log.With().Str("tenant", req.Call.Tenant).Str("call", req.Call.Call).Uint32("epoch", req.Epoch).Logger()
	trace.Annotate(ctx, append(trace.Call(req.Call.Tenant, req.Call.Call), trace.Epoch(req.Epoch))...)
	var placed []wire.Placement
	for _, pool := range req.Pools {
		offer := wire.Offer{V: wire.V, Call: req.Call, Ingest: req.Ingest, Epoch: req.Epoch, Pool: pool, Router: r.cfg.ID,
			Resume: r.resume(&req, pool), Reason: req.Reason}
		p, code, reason := r.placePool(ctx, &req, &offer)
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
	for wid, w := range r.workers {
		if w.hb.Pool != pool {
			continue
		}
		calls, _ := r.workerCalls(wid)
		if c, ok := calls[req.Call.ID]; ok && c.Epoch < req.Epoch && c.Epoch >= bestEpoch {
			best, bestEpoch = c.Progress, c.Epoch
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
func (r *Router) placePool(ctx context.Context, req *wire.PlaceRequest, offer *wire.Offer) (*wire.Placement, string, string) {
	tried := map[string]bool{}
	lastCode, lastReason := wire.CodeNoWorkers, fmt.Sprintf("no live worker in pool %q", offer.Pool)
	for attempt := 0; attempt < r.cfg.OfferAttempts; attempt++ {
		wid, code, reason := r.pickWarm(req, offer.Pool, tried)
		if wid == "" {
			// After an offer, its answer (or its timeout) is the reason: "all workers are full"
			// would hide that the one eligible worker did not answer in time.
			if attempt == 0 {
				lastCode, lastReason = code, reason
			}
			break
		}
		tried[wid] = true
		octx, span := trace.Start(ctx, "router.offer", trace.Client, append(trace.Call(req.Call.Tenant, req.Call.Call),
			trace.Epoch(req.Epoch), trace.String("callrouter.worker", wid), trace.String("callrouter.pool", offer.Pool))...)
		timeout := r.cfg.OfferTimeout
		if wire.MakeBeforeBreak(req.Reason) {
			timeout = max(timeout, r.cfg.MoveOfferTimeout)
		}
		octx, cancel := context.WithTimeout(octx, timeout)
		var or wire.OfferReply
		err := bus.Request(octx, r.nc, subjects.WorkerVerb(wid, subjects.WorkerVerbOffer), offer, &or)
		cancel()
		switch {
		case err != nil:
			trace.Fail(span, err.Error())
		case !or.OK:
			trace.Fail(span, or.Code+": "+or.Reason)
		}
		span.End()
		switch {
		case err != nil:
			r.m.offers.WithLabelValues("error").Inc()
			r.unpend(wid)
			r.abandon(wid, req)
			lastCode, lastReason = wire.CodeNoCapacity, "offer to "+wid+": "+err.Error()
		case !or.OK:
			r.m.offers.WithLabelValues(offerCodeLabel(or.Code)).Inc()
			r.unpend(wid)
			lastCode, lastReason = wire.CodeNoCapacity, wid+": "+or.Reason
		default:
			r.m.offers.WithLabelValues("accepted").Inc()
			return &wire.Placement{Pool: offer.Pool, Worker: wid}, "", ""
		}
	}
	return nil, lastCode, lastReason
}

// pickWarm is pick, except that a router that has not yet heard a full heartbeat round (Misses
// intervals since it started) may not know the workers that exist: instead of refusing, it waits
// for them, at most until that round is over.
func (r *Router) pickWarm(req *wire.PlaceRequest, pool string, tried map[string]bool) (string, string, string) {
	warm := r.started().Add(time.Duration(r.cfg.Misses+1) * r.cfg.HeartbeatInterval)
	waited := false
	for {
		wid, code, reason := r.pick(req, pool, tried)
		if wid != "" || code != wire.CodeNoWorkers && code != wire.CodeNoCapacity || !time.Now().Before(warm) {
			return wid, code, reason
		}
		if !waited {
			waited = true
			r.m.coldWaits.Inc()
		}
		time.Sleep(min(50*time.Millisecond, time.Until(warm)+time.Millisecond))
	}
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
		if tried[id] || slices.Contains(req.Exclude, id) || !w.eligible() ||
			len(w.hb.Tenants) > 0 && !slices.Contains(w.hb.Tenants, req.Call.Tenant) {
			continue
		}
		cands = append(cands, cand{id, float64(w.hb.Active+w.pending) / float64(w.hb.Capacity)})
	}
	if len(cands) == 0 {
		if live == 0 {
			return "", wire.CodeNoWorkers, fmt.Sprintf("no live worker in pool %q", pool)
		}
		return "", wire.CodeNoCapacity, fmt.Sprintf("all %d workers of pool %q are full, draining, lagging, excluded or dedicated to other tenants", live, pool)
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
