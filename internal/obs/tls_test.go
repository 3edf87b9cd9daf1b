package obs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// writeSelfSigned writes a self-signed certificate with the given serial and its key.
func writeSelfSigned(t *testing.T, certFile, keyFile string, serial int64) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestKeyPairReloadsOnSIGHUP: with file polling out of the way (an hour), a SIGHUP loads the
// files written meanwhile.
func TestKeyPairReloadsOnSIGHUP(t *testing.T) {
	// A handler of the test's own, so a SIGHUP sent before Watch has registered cannot end the
	// test process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	writeSelfSigned(t, cert, key, 1)
	kp, err := LoadKeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { kp.Watch(ctx, time.Hour, zerolog.Nop()); close(done) }()
	defer func() { cancel(); <-done }()
	writeSelfSigned(t, cert, key, 2)
	for deadline := time.Now().Add(10 * time.Second); kp.Leaf().SerialNumber.Int64() != 2; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("SIGHUP did not reload the key pair")
		}
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
}

func TestLoadKeyPairSaysWhichFile(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	writeSelfSigned(t, cert, key, 1)
	if _, err := LoadKeyPair(filepath.Join(dir, "none"), key); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("missing certificate: %v", err)
	}
	if _, err := LoadKeyPair(cert, filepath.Join(dir, "none")); err == nil || !strings.Contains(err.Error(), "key") {
		t.Errorf("missing key: %v", err)
	}
	other := filepath.Join(dir, "k2.pem")
	writeSelfSigned(t, filepath.Join(dir, "c2.pem"), other, 2)
	if _, err := LoadKeyPair(cert, other); err == nil {
		t.Error("a key of another certificate loaded")
	}
}
