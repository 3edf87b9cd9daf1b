package bus

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/peertest"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
	}
}

func TestConnectFailsWithoutServerUnlessWaiting(t *testing.T) {
	cfg := DefaultConfig()
	cfg.URL = fmt.Sprintf("nats://127.0.0.1:%d", peertest.Port(t))
	if nc, err := Connect(cfg, zerolog.Nop()); err == nil {
		nc.Close()
		t.Fatal("Connect to a port nothing listens on succeeded without WaitForServer")
	}
	cfg.WaitForServer = true
	nc, err := Connect(cfg, zerolog.Nop())
	if err != nil {
		t.Fatalf("Connect with WaitForServer: %v", err)
	}
	defer nc.Close()
	if err := Connected(nc); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Connected = %v, want ErrNotConnected", err)
	}
}

// TestSubscriptionsBeforeFirstConnectAreSent is the nats.go (v1.55) behaviour the binaries rely on
// when they start before NATS: a subscription made while the first connection is still being
// retried is sent when it is made, a publish made then is buffered and delivered, and both survive
// the server going away and coming back on the same port.
func TestSubscriptionsBeforeFirstConnectAreSent(t *testing.T) {
	port := peertest.Port(t)
	cfg := DefaultConfig()
	cfg.URL = fmt.Sprintf("nats://127.0.0.1:%d", port)
	cfg.WaitForServer = true
	nc, err := Connect(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	got := make(chan string, 16)
	if _, err := nc.Subscribe("early.>", func(m *nats.Msg) { got <- string(m.Data) }); err != nil {
		t.Fatalf("subscribe before the first connection: %v", err)
	}
	if err := nc.Publish("early.buffered", []byte("buffered")); err != nil {
		t.Fatalf("publish before the first connection: %v", err)
	}
	time.Sleep(300 * time.Millisecond) // a few failed attempts first (not an assertion)
	srv, err := StartEmbedded(EmbeddedOptions{Port: port})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the first connection", func() bool { return Connected(nc) == nil })
	expect := func(want string) {
		t.Helper()
		select {
		case m := <-got:
			if m != want {
				t.Fatalf("got %q, want %q", m, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%q not delivered", want)
		}
	}
	expect("buffered")
	// Another client proves the server itself holds the subscription.
	other, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.Publish("early.other", []byte("other")); err != nil {
		t.Fatal(err)
	}
	expect("other")

	srv.Close()
	eventually(t, 10*time.Second, "the disconnect to be seen", func() bool { return Connected(nc) != nil })
	srv, err = StartEmbedded(EmbeddedOptions{Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	eventually(t, 10*time.Second, "the reconnection", func() bool { return Connected(nc) == nil })
	// The client resends its subscriptions as it reconnects, but the server reads them on that
	// connection while it reads other2's publish on another: a round trip on nc orders them.
	if err := nc.FlushTimeout(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	other2, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer other2.Close()
	if err := other2.Publish("early.again", []byte("again")); err != nil {
		t.Fatal(err)
	}
	expect("again")
}
