package main

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
	"testing"
	"time"
)

// selfSigned writes a self-signed certificate and its key as PEM files.
func selfSigned(t *testing.T) (cert, key string) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ingest"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(k)
	dir := t.TempDir()
	cert, key = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// TestSIPSecurityFlags checks that the SIP access, TLS and SRTP flags are validated by
// -check-config, and that digest users come from the environment too.
func TestSIPSecurityFlags(t *testing.T) {
	cert, key := selfSigned(t)
	base := []string{"-check-config", "-nats", "nats://127.0.0.1:1", "-sip-listen", "127.0.0.1:5060"}
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"-sip-auth-users", "alice:pw:acme,bob:p:w:globex", "-sip-tenant-rule", "auth", "-sip-dialog-check", "ip"}, 0},
		{[]string{"-sip-auth-users", "alice:pw:*", "-sip-allow", "10.0.0.0/8"}, 0},
		{[]string{"-sip-auth-users", "alice:pw"}, 2},     // no tenant
		{[]string{"-sip-auth-users", "alice:pw:a.b"}, 2}, // not a tenant token
		{[]string{"-sip-tenant-rule", "auth"}, 2},        // auth rule without users
		{[]string{"-sip-dialog-check", "loose"}, 2},
		{[]string{"-sip-srtp", "required"}, 0},
		{[]string{"-sip-srtp", "maybe"}, 2},
		{[]string{"-sip-tls-listen", "127.0.0.1:5061", "-sip-tls-cert", cert, "-sip-tls-key", key}, 0},
		{[]string{"-sip-tls-listen", "127.0.0.1:5061"}, 2},                                             // no certificate
		{[]string{"-sip-tls-listen", "127.0.0.1:5061", "-sip-tls-cert", key, "-sip-tls-key", cert}, 2}, // swapped
		{[]string{"-sip-tls-listen", "127.0.0.1:5061", "-sip-tls-cert", cert, "-sip-tls-key", key, "-sip-tls-client-ca", key}, 2},
		{[]string{"-sip-tls-cert", cert, "-sip-tls-key", key}, 2}, // TLS files without a TLS listener
	} {
		if code := run(append(base, c.args...)); code != c.code {
			t.Errorf("run(%q) = %d, want %d", c.args, code, c.code)
		}
	}
	t.Setenv("CALLROUTER_SIP_AUTH_USERS", "alice:pw")
	if code := run(base); code != 2 {
		t.Errorf("CALLROUTER_SIP_AUTH_USERS without a tenant: run = %d, want 2", code)
	}
	t.Setenv("CALLROUTER_SIP_AUTH_USERS", "alice:pw:acme")
	if code := run(base); code != 0 {
		t.Errorf("CALLROUTER_SIP_AUTH_USERS=alice:pw:acme: run = %d, want 0", code)
	}
}
