package bus_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/natsauth"
	"github.com/rs/zerolog"
)

// TestTLSAndNkey connects with the -nats-tls-cert/-key/-ca and -nats-nkey settings to an
// embedded server that requires TLS with verified client certificates and nkey users, as the
// Kubernetes overlays run NATS.
func TestTLSAndNkey(t *testing.T) {
	dir := t.TempDir()
	if err := natsauth.WriteDevTLS(dir, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	set, err := natsauth.NewSet(natsauth.Local([]string{"default"}, "acme"))
	if err != nil {
		t.Fatal(err)
	}
	users, err := set.Users()
	if err != nil {
		t.Fatal(err)
	}
	f := func(name string) string { return filepath.Join(dir, name) }
	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1, Users: users,
		TLSCert: f(natsauth.ServerCertFile), TLSKey: f(natsauth.ServerKeyFile), TLSCA: f(natsauth.CAFile)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	seed, _ := set.Seed(natsauth.RoleTenant, "", "acme")
	nkey := f("tenant-acme.nk")
	if err := os.WriteFile(nkey, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := bus.DefaultConfig()
	cfg.URL, cfg.NkeyFile = srv.ClientURL(), nkey
	cfg.TLSCert, cfg.TLSKey, cfg.TLSCA = f(natsauth.ClientCertFile), f(natsauth.ClientKeyFile), f(natsauth.CAFile)
	nc, err := bus.Connect(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if !nc.TLSRequired() {
		t.Fatal("connection is not TLS")
	}
	sub, err := nc.SubscribeSync("events.acme.c1.start")
	if err != nil {
		t.Fatal(err)
	}
	// The tenant may not publish its events; an operator identity (admin) can't either: use the
	// ingest identity, over TLS with an in-memory seed.
	ing := cfg
	ing.NkeyFile, ing.NkeySeed = "", mustSeed(t, set, natsauth.RoleIngest)
	inc, err := bus.Connect(ing, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer inc.Close()
	_ = nc.Flush()
	if err := inc.Publish("events.acme.c1.start", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("event over TLS: %v", err)
	}

	for name, c := range map[string]func(*bus.Config){
		"no client certificate": func(c *bus.Config) { c.TLSCert, c.TLSKey = "", "" },
		"no CA":                 func(c *bus.Config) { c.TLSCA = "" },
		"no nkey":               func(c *bus.Config) { c.NkeyFile = "" },
	} {
		bad := cfg
		c(&bad)
		if nc, err := bus.Connect(bad, zerolog.Nop()); err == nil {
			nc.Close()
			t.Errorf("%s: connected", name)
		}
	}
}

func mustSeed(t *testing.T, set *natsauth.Set, role string) []byte {
	t.Helper()
	s, err := set.Seed(role, "", "")
	if err != nil {
		t.Fatal(err)
	}
	return s
}
