package cli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
)

func writeCert(t *testing.T, path string, notAfter ...time.Time) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	for i, na := range notAfter {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 1)), Subject: pkix.Name{CommonName: "test"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: na}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestNATSAndCertificateMetrics(t *testing.T) {
	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cfg := bus.DefaultConfig()
	cfg.URL = srv.URL()
	nc, err := bus.Connect(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	dir := t.TempDir()
	soon, later := time.Now().Add(48*time.Hour).Truncate(time.Second), time.Now().Add(900*time.Hour).Truncate(time.Second)
	writeCert(t, filepath.Join(dir, "ca.pem"), later, soon) // a bundle: the earliest counts
	cfg.TLSCA = filepath.Join(dir, "ca.pem")
	cfg.TLSCert = filepath.Join(dir, "missing.pem") // unreadable: reported as nothing
	reg := prometheus.NewRegistry()
	if err := RegisterMetrics(reg, nc, cfg); err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("x", []byte("hello")); err != nil || nc.Flush() != nil {
		t.Fatal(err)
	}
	want := `
# HELP callrouter_tls_cert_expiry_timestamp_seconds When the TLS certificate in a configured file expires (Unix seconds; the earliest of the file's certificates), read on each scrape so a rotated file shows at once. cert: nats_client, nats_ca.
# TYPE callrouter_tls_cert_expiry_timestamp_seconds gauge
callrouter_tls_cert_expiry_timestamp_seconds{cert="nats_ca"} ` + big.NewInt(soon.Unix()).String() + `
# HELP callrouter_nats_connected 1 while the NATS connection is up.
# TYPE callrouter_nats_connected gauge
callrouter_nats_connected 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "callrouter_tls_cert_expiry_timestamp_seconds", "callrouter_nats_connected"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(reg, "callrouter_nats_messages_total"); n != 2 {
		t.Errorf("%d message series, want in and out", n)
	}
	// A rotated file shows on the next scrape.
	writeCert(t, cfg.TLSCA, later)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(strings.ReplaceAll(want, big.NewInt(soon.Unix()).String(), big.NewInt(later.Unix()).String())),
		"callrouter_tls_cert_expiry_timestamp_seconds"); err != nil {
		t.Error(err)
	}
}
