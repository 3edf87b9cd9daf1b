package router

import (
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/rs/zerolog"
)

// A worker that took an offer the router then abandoned holds the call at epoch 2, an orphan:
// ingest lists it on w0. The next attempt's offer keeps that worker and advances the call in
// place to epoch 3; ingest's heartbeat shows the new placement a moment later. The orphan sweep
// must not release the call in between on the age the holder had at epoch 2: that dropped a
// call ingest had just placed there, and its frames until the routers' reconciliation moved it
// again (TestDrainOfHundredCallsTakesSeconds under load). At epoch 3 the grace starts afresh.
func TestOrphanGraceRestartsWhenTheHolderAdvances(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ID = "r1"
	r, err := New(cfg, Deps{Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	id := session.ID{Tenant: "acme", Call: "adv"}
	t0 := time.Now()
	r.ingests["in1"] = &ingestInfo{hb: wire.IngestHeartbeat{ID: "in1"}, seen: t0}
	ingestLists := func(worker string, epoch uint32) {
		r.istate["in1"] = &callState[wire.IngestCall]{known: true, byID: map[session.ID]wire.IngestCall{
			id: {Tenant: "acme", Call: "adv", Epoch: epoch, Placements: []wire.Placement{{Pool: "default", Worker: worker}}}}}
	}
	w1Holds := func(epoch uint32) {
		r.workers["w1"] = &workerInfo{hb: wire.WorkerHeartbeat{ID: "w1", Pool: "default"}, seen: t0}
		r.wstate["w1"] = &callState[wire.WorkerCall]{known: true, byID: map[session.ID]wire.WorkerCall{
			id: {Tenant: "acme", Call: "adv", Epoch: epoch, Ingest: "in1"}}}
	}
	grace := cfg.OrphanGrace
	ingestLists("w0", 1)
	w1Holds(2)
	if sw := r.sweepOrphans(t0); len(sw.releases) != 0 {
		t.Fatalf("released at once: %+v", sw.releases)
	}
	w1Holds(3) // the offer at epoch 3 kept w1
	at := t0.Add(grace * 9 / 10)
	if sw := r.sweepOrphans(at); len(sw.releases) != 0 {
		t.Fatalf("released before the grace: %+v", sw.releases)
	}
	// Ingest's list still shows w0 past the grace counted from epoch 2, not from epoch 3.
	if sw := r.sweepOrphans(t0.Add(grace * 3 / 2)); len(sw.releases) != 0 {
		t.Fatalf("w1 released at epoch 3 %v after it got there, within the grace: %+v", grace*6/10, sw.releases)
	}
	ingestLists("w1", 3)
	if sw := r.sweepOrphans(at.Add(2 * grace)); len(sw.releases) != 0 {
		t.Fatalf("released once ingest lists it: %+v", sw.releases)
	}
	// A holder that stays orphaned at one epoch is still released after the grace.
	ingestLists("w0", 4)
	later := at.Add(3 * grace)
	if sw := r.sweepOrphans(later); len(sw.releases) != 0 {
		t.Fatalf("released at once: %+v", sw.releases)
	}
	if sw := r.sweepOrphans(later.Add(grace + time.Millisecond)); len(sw.releases) != 1 || sw.releases[0].worker != "w1" || sw.releases[0].msg.Epoch != 3 {
		t.Fatalf("releases %+v, want w1's call at epoch 3", sw.releases)
	}
}
