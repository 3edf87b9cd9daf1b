package router

import (
	"slices"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/rs/zerolog"
)

// During a make-before-break hand-over the old worker (epoch 1, stopped at frame 50) and the new
// one (epoch 2, at frame 80) both list the call. The progress kept for a later resume is the new
// holder's, whichever list the sweep reads last, and the old holder declared dead afterwards does
// not overwrite it either: a resume from the old position would replay 30 frames the new holder
// processed. An entry left unrefreshed for the orphan grace gives way to a lower epoch (the call
// ended; its id may be reused).
func TestSavedProgressIsTheNewestEpochs(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ID = "r1"
	r, err := New(cfg, Deps{Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	id := session.ID{Tenant: "acme", Call: "handover"}
	t0 := time.Now()
	r.ingests["in1"] = &ingestInfo{hb: wire.IngestHeartbeat{ID: "in1", IntervalMS: 100}, seen: t0}
	r.istate["in1"] = &callState[wire.IngestCall]{known: true, byID: map[session.ID]wire.IngestCall{
		id: {Tenant: "acme", Call: "handover", Epoch: 2, Placements: []wire.Placement{{Pool: "default", Worker: "new"}}}}}
	progress := func(next int64) []session.LegSeq {
		return []session.LegSeq{{Leg: 0, Next: next}, {Leg: 1, Next: next}}
	}
	holds := func(worker string, epoch uint32, next int64, seen time.Time) {
		r.workers[worker] = &workerInfo{hb: wire.WorkerHeartbeat{ID: worker, Pool: "default", IntervalMS: 100}, seen: seen}
		r.wstate[worker] = &callState[wire.WorkerCall]{known: true, byID: map[session.ID]wire.WorkerCall{
			id: {Tenant: "acme", Call: "handover", Epoch: epoch, Ingest: "in1", Progress: progress(next)}}}
	}
	holds("old", 1, 50, t0)
	holds("new", 2, 80, t0)
	now := t0
	for i := range 20 { // map order varies from sweep to sweep
		now = t0.Add(time.Duration(i) * 10 * time.Millisecond)
		r.sweepOrphans(now)
		if got := r.lastProgress(id, "default"); !slices.Equal(got, progress(80)) {
			t.Fatalf("sweep %d: saved progress %+v; want the epoch-2 holder's %+v", i, got, progress(80))
		}
	}
	// The old holder goes silent and is declared down: its last list does not win either.
	r.workers["old"].seen = now.Add(-time.Hour)
	now = now.Add(10 * time.Millisecond)
	if downs := r.judge(now); len(downs) != 1 || downs[0].ID != "old" {
		t.Fatalf("downs %+v; want the old holder", downs)
	}
	if got := r.lastProgress(id, "default"); !slices.Equal(got, progress(80)) {
		t.Fatalf("after the old holder's death: saved progress %+v; want %+v", got, progress(80))
	}
	// Past the grace without a refresh, a call of that id at epoch 1 is saved.
	delete(r.workers, "new")
	delete(r.wstate, "new")
	holds("again", 1, 7, now)
	r.sweepOrphans(now.Add(cfg.OrphanGrace + time.Millisecond))
	if got := r.lastProgress(id, "default"); !slices.Equal(got, progress(7)) {
		t.Fatalf("an entry stale for the grace kept: saved progress %+v; want %+v", got, progress(7))
	}
}
