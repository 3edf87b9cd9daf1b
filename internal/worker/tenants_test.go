package worker_test

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
)

// A worker dedicated to some tenants (-tenants) refuses any other tenant's offer before taking a
// slot, and says whom it serves in its heartbeat, so routers offer it nothing else.
func TestDedicatedWorkerRefusesOtherTenants(t *testing.T) {
	wc := workerConfig()
	wc.Tenants = []string{"acme"}
	l := startLone(t, wc)
	other := spec("c-globex")
	other.ID = session.ID{Tenant: "globex", Call: "c-globex"}
	if r := l.offer(t, wire.Offer{Call: other, Epoch: 1}); r.OK || r.Code != wire.CodeBadRequest {
		t.Fatalf("offer of globex's call: %+v; want bad_request", r.Reply)
	}
	if l.w.Calls() != 0 {
		t.Fatalf("holding %d calls after the refusal", l.w.Calls())
	}
	if r := l.offer(t, wire.Offer{Call: spec("c-acme"), Epoch: 1}); !r.OK {
		t.Fatalf("offer of acme's call: %+v", r.Reply)
	}
	sub, err := l.nc.SubscribeSync(subjects.Heartbeat(subjects.Worker, l.id))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	m, err := sub.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var hb wire.WorkerHeartbeat
	if err := json.Unmarshal(m.Data, &hb); err != nil || !slices.Equal(hb.Tenants, []string{"acme"}) {
		t.Fatalf("heartbeat tenants %v (%v); want [acme]", hb.Tenants, err)
	}
}
