package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

func TestKeysAddsATenantWithOneLine(t *testing.T) {
	dir := t.TempDir()
	spec := filepath.Join(dir, "identities.conf")
	out := filepath.Join(dir, "creds")
	write := func(text string) {
		if err := os.WriteFile(spec, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	base := "pool default shared\ningest\nrouter\nworker default\ntenant acme\n"
	write(base)
	var stdout, stderr bytes.Buffer
	if code := run([]string{"keys", "-spec", spec, "-out", out}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	routerKey, _ := os.ReadFile(filepath.Join(out, "router.nk"))
	write(base + "tenant globex audio\n")
	stdout.Reset()
	if code := run([]string{"keys", "-spec", spec, "-out", out}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if got := strings.Count(stdout.String(), "created"); got != 1 || !strings.Contains(stdout.String(), "tenant-globex") {
		t.Fatalf("second run created %d identities, want only tenant-globex:\n%s", got, stdout.String())
	}
	if again, _ := os.ReadFile(filepath.Join(out, "router.nk")); !bytes.Equal(again, routerKey) {
		t.Fatal("the router's key changed when a tenant was added")
	}
	conf := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(conf, []byte("port: -1\ninclude ./creds/auth.conf\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	if len(opts.Nkeys) != 5 {
		t.Fatalf("auth.conf has %d users, want 5", len(opts.Nkeys))
	}
}

func TestTLSWritesACAAndCertificates(t *testing.T) {
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	if code := run([]string{"tls", "-out", dir, "-hosts", "nats.example"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	_, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: filepath.Join(dir, "server.crt"), KeyFile: filepath.Join(dir, "server.key"), CaFile: filepath.Join(dir, "ca.crt"), Verify: true})
	if err != nil {
		t.Fatal(err)
	}
}

func TestBadUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"nope"}, {"keys"}, {"keys", "-spec", "/nonexistent", "-out", t.TempDir()}, {"tls"}, {"tls", "-out", t.TempDir(), "-valid", "-1h"}} {
		var o, e bytes.Buffer
		if code := run(args, &o, &e); code != 2 {
			t.Errorf("run(%q) = %d, want 2", args, code)
		}
	}
}
