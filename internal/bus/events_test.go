package bus

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

// TestEventsRoundTrip: an event published with PublishEvent arrives on its call's subject as a
// versioned wire.Event with its data, and CollectEvents collects it (and skips what is not an
// event) until closed.
func TestEventsRoundTrip(t *testing.T) {
	srv, err := StartEmbedded(EmbeddedOptions{Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	all, err := CollectEvents(nc, "events.acme.>")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := nc.SubscribeSync("events.acme.c1.speech")
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600))
	if err := PublishEvent(nc, wire.Event{Kind: "speech", Tenant: "acme", Call: "c1", Epoch: 2, Source: "test", Time: at}, map[string]int{"leg": 1}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("events.acme.c1.junk", []byte("not json")); err != nil {
		t.Fatal(err)
	}
	if err := PublishEvent(nc, wire.Event{Kind: "stopped", Tenant: "acme", Call: "c1", Epoch: 2, Source: "test"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := PublishEvent(nc, wire.Event{Kind: "bad", Tenant: "acme", Call: "c1"}, func() {}); err == nil || !strings.Contains(err.Error(), "bad") {
		t.Errorf("unmarshalable data: %v, want an error naming the kind", err)
	}
	m, err := raw.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var ev wire.Event
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.V != wire.V || ev.Epoch != 2 || ev.Source != "test" || !ev.Time.Equal(at) || ev.Time.Location() != time.UTC || string(ev.Data) != `{"leg":1}` {
		t.Errorf("event %+v", ev)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(all.All()) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := all.All(); len(got) != 2 || got[0].Kind != "speech" || got[1].Kind != "stopped" || got[1].Time.IsZero() {
		t.Fatalf("collected %+v", got)
	}
	if got := all.Of("stopped"); len(got) != 1 || got[0].Call != "c1" {
		t.Errorf("Of(stopped) %+v", got)
	}
	if err := all.Close(); err != nil {
		t.Fatal(err)
	}
	if err := PublishEvent(nc, wire.Event{Kind: "late", Tenant: "acme", Call: "c1"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := len(all.All()); n != 2 {
		t.Errorf("%d events after Close, want 2", n)
	}
}
