package inproc

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/loadtest"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// TestRemoteIngestSignsIn: -mode inproc on a remote NATS that requires an nkey runs the tester's
// ingest node with the credentials cmd/loadtest's -nats-nkey gives (StartWith); without them the
// server refuses it.
func TestRemoteIngestSignsIn(t *testing.T) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	seedFile := filepath.Join(t.TempDir(), "tester.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1, Users: []*server.NkeyUser{{Nkey: pub}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	cfg := loadtest.LocalConfig{Mode: loadtest.ModeInproc, RunID: "auth", NATSURL: srv.URL(), Tenant: "loadtest", Calls: 1, Legs: 1, Log: testLog(t)}
	if _, err := Start(context.Background(), cfg); err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("without credentials: %v; want the server's authorization refusal", err)
	}
	l, err := StartWith(bus.Config{NkeyFile: seedFile})(context.Background(), cfg)
	if err != nil {
		t.Fatalf("with the nkey: %v", err)
	}
	defer l.Close()
	if l.Stack || l.Ingest == nil || l.URL != srv.URL() {
		t.Fatalf("local %+v: want an ingest node on the remote NATS", l)
	}
}
