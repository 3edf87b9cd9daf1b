package router

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/natsauth"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestHistoryIsBounded(t *testing.T) {
	var h history
	t0 := time.Now()
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * time.Millisecond) }
	h.add("acme", "c1", wire.HistoryEntry{Time: at(0), Kind: "start"})
	for i := 1; i <= 100; i++ {
		h.add("acme", "c1", wire.HistoryEntry{Time: at(i), Kind: "gap"})
	}
	got, ok := h.get("acme", "c1")
	if !ok || len(got.Events) != 1+historyGaps || got.Dropped != 100-historyGaps {
		t.Fatalf("after 100 gaps: %d events, %d dropped", len(got.Events), got.Dropped)
	}
	for i := 0; i < 2*historyEvents; i++ {
		h.add("acme", "c1", wire.HistoryEntry{Time: at(200 + i), Kind: "replaced", Epoch: uint32(i)})
	}
	h.add("acme", "c1", wire.HistoryEntry{Time: at(500), Kind: "end"})
	got, _ = h.get("acme", "c1")
	if len(got.Events) != historyEvents || !got.Ended || got.Events[len(got.Events)-1].Kind != "end" || got.Events[0].Kind != "replaced" {
		t.Fatalf("after many re-placements: %d events (first %s, last %s), ended %v", len(got.Events), got.Events[0].Kind, got.Events[len(got.Events)-1].Kind, got.Ended)
	}
	// Calls past the bound are forgotten oldest first; the index of keys stays bounded.
	for i := 0; i < 3*historyCalls; i++ {
		h.add("acme", fmt.Sprintf("x%d", i), wire.HistoryEntry{Time: at(i), Kind: "start"})
	}
	if _, ok := h.get("acme", "c1"); ok {
		t.Error("the oldest call is still kept")
	}
	if _, ok := h.get("acme", fmt.Sprintf("x%d", 3*historyCalls-1)); !ok {
		t.Error("the newest call is not kept")
	}
	if len(h.calls) != historyCalls || len(h.order) > 2*historyCalls {
		t.Errorf("%d calls kept, %d keys indexed", len(h.calls), len(h.order))
	}
}

func TestTenantLabelsAreBounded(t *testing.T) {
	m := newTenantMetrics(prometheus.NewRegistry())
	for i := 0; i < maxTenantLabels+50; i++ {
		m.observe(fmt.Sprintf("t%d", i), "start", nil)
	}
	m.observe("t0", "gap", []byte(`{"leg":0,"from":10,"to":14,"cause":"network_loss"}`))
	m.observe("t0", "gap", []byte(`{"leg":0,"from":20,"to":20,"cause":"made-up"}`))
	m.observe("t0", "gap", []byte(`{"leg":0,"from":20,"to":10,"cause":"network_loss"}`)) // backwards: ignored
	m.observe("t0", "gap", []byte(`{"leg":0,"from":30,"to":39,"cause":"paused"}`))       // a secure pause: not lost
	if got := testutil.ToFloat64(m.events.WithLabelValues(otherTenant, "start")); got != 50 {
		t.Errorf("%v starts counted as %s, want 50", got, otherTenant)
	}
	if got := testutil.ToFloat64(m.lost.WithLabelValues("t0", "network_loss")); got != 5 {
		t.Errorf("t0 lost %v network_loss frames, want 5", got)
	}
	if got := testutil.ToFloat64(m.lost.WithLabelValues("t0", "other")); got != 1 {
		t.Errorf("t0 lost %v frames of an unknown cause, want 1 under \"other\"", got)
	}
	if n := testutil.CollectAndCount(m.events); n != maxTenantLabels+1 {
		t.Errorf("%d series, want %d", n, maxTenantLabels+1)
	}
}

// The router's NATS identity (internal/natsauth) may subscribe to exactly the event kinds whose
// history it keeps: a kind added here without the permission would silently never arrive.
func TestHistoryKindsArePermitted(t *testing.T) {
	if !slices.Equal(historyKinds, natsauth.RouterEventKinds) {
		t.Errorf("history kinds %v, router permissions %v: keep them equal", historyKinds, natsauth.RouterEventKinds)
	}
}
