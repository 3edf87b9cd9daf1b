package whip

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/obs"
	"github.com/rs/zerolog"
)

// testCA is a certificate authority made for one test, and a client that trusts only it.
type testCA struct {
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	pool   *x509.CertPool
	serial int64
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "callrouter test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool, serial: 1}
}

// issue writes a server certificate for 127.0.0.1 and localhost, signed by the CA, and its key
// to certFile and keyFile; it returns the certificate's serial number.
func (ca *testCA) issue(t *testing.T, certFile, keyFile string) int64 {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca.serial++
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(ca.serial), Subject: pkix.Name{CommonName: "ingest"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	// Written beside and renamed over, as a Secret's files are swapped: never half a file.
	for path, blk := range map[string]*pem.Block{certFile: {Type: "CERTIFICATE", Bytes: der}, keyFile: {Type: "EC PRIVATE KEY", Bytes: kder}} {
		if err := os.WriteFile(path+".tmp", pem.EncodeToMemory(blk), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
	}
	return ca.serial
}

func (ca *testCA) client() *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool}, ForceAttemptHTTP2: true}}
}

// startPublic serves the env's endpoint on a public listener of its own, with TLS when cfg has a
// key pair, and /metrics, /healthz and /readyz on a private obs listener, as cmd/ingest does.
func startPublic(t *testing.T, e *env, cfg ListenConfig) (pub *Public, private string) {
	t.Helper()
	pub, err := ListenPublic(cfg, e.whip.PublicHandler(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	h := &obs.Health{}
	h.SetLive(true)
	h.SetReady(true)
	priv, err := obs.Listen("127.0.0.1:0", h, e.stack.Registry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { _ = pub.Run(ctx); done <- struct{}{} }()
	go func() { _ = priv.Run(ctx); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); <-done; <-done })
	return pub, priv.Addr()
}

func get(t *testing.T, hc *http.Client, url string) (int, string) {
	t.Helper()
	res, err := hc.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// TestPublicListenerOverHTTPS serves WHIP and the call page over HTTPS with a certificate of a
// test CA, and health and metrics on the private listener: a call is placed and hung up over
// HTTPS by a client that trusts only that CA; /metrics, /healthz and /readyz answer 404 on the
// public port and 200 on the private one; plain HTTP on the public port gets no page.
func TestPublicListenerOverHTTPS(t *testing.T) {
	e := startEnv(t, 1, testConfig())
	dir := t.TempDir()
	ca := newTestCA(t)
	lc := DefaultListenConfig()
	lc.Addr, lc.CertFile, lc.KeyFile = "127.0.0.1:0", filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	ca.issue(t, lc.CertFile, lc.KeyFile)
	if err := lc.Validate(); err != nil {
		t.Fatal(err)
	}
	pub, private := startPublic(t, e, lc)
	if !strings.HasPrefix(pub.URL(), "https://") {
		t.Fatalf("public URL %s", pub.URL())
	}
	hc := ca.client()
	ctx, cancel := context.WithTimeout(withClient(context.Background(), hc), 30*time.Second)
	defer cancel()

	for _, p := range obs.Paths() {
		if code, body := get(t, hc, pub.URL()+p); code != http.StatusNotFound || strings.Contains(body, "callrouter_") {
			t.Errorf("public %s: %d %.80q; want 404", p, code, body)
		}
		if code, _ := get(t, http.DefaultClient, "http://"+private+p); code != http.StatusOK {
			t.Errorf("private %s: %d; want 200", p, code)
		}
	}
	if code, body := get(t, hc, pub.URL()+"/call/"); code != 200 || !strings.Contains(body, `<button id="call"`) {
		t.Errorf("public /call/: %d", code)
	}
	if code, _ := get(t, http.DefaultClient, "http://"+private+"/call/"); code != http.StatusNotFound {
		t.Errorf("private /call/: %d; want 404 (the call page is on the public listener only)", code)
	}
	if code, _ := get(t, http.DefaultClient, "http://"+pub.Addr()+"/call/"); code != http.StatusBadRequest {
		t.Errorf("plain HTTP to the HTTPS port: %d; want 400", code)
	}

	c, err := dial(ctx, pub.URL()+"/whip", tokenAcme, "pcmu")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(c.location, "https://") {
		t.Errorf("session URL %s", c.location)
	}
	frames := pcmuFrames(t, "testdata/speech-pcmu.wav")[:25]
	if err := c.send(ctx, frames); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "frames at the worker", func() bool { return len(processed.frames(c.call)) >= len(frames) })
	if code, err := c.hangup(); err != nil || code != http.StatusOK {
		t.Fatalf("DELETE over HTTPS: %d %v", code, err)
	}
	if code, body := get(t, http.DefaultClient, "http://"+private+"/metrics"); code != 200 || !strings.Contains(body, `callrouter_whip_requests_total{code="201",method="POST"} 1`) {
		t.Errorf("private /metrics: %d, not the WHIP POST", code)
	}
	// A client that does not trust the CA gets no answer.
	if _, err := http.Get(pub.URL() + "/call/"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a client without the CA: %v; want a certificate error", err)
	}
}

// TestCertificateReloadedOnChange replaces the certificate files under a running listener: new
// handshakes get the new certificate, without a restart; a broken pair keeps the old one.
func TestCertificateReloadedOnChange(t *testing.T) {
	e := startEnv(t, 1, testConfig())
	dir := t.TempDir()
	ca := newTestCA(t)
	lc := DefaultListenConfig()
	lc.Addr, lc.CertFile, lc.KeyFile = "127.0.0.1:0", filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	lc.CertReload = 20 * time.Millisecond
	first := ca.issue(t, lc.CertFile, lc.KeyFile)
	pub, _ := startPublic(t, e, lc)
	serial := func() int64 {
		conn, err := tls.Dial("tcp", pub.Addr(), &tls.Config{RootCAs: ca.pool, ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	if got := serial(); got != first {
		t.Fatalf("serial %d, want %d", got, first)
	}
	second := ca.issue(t, lc.CertFile, lc.KeyFile)
	eventually(t, 10*time.Second, "the renewed certificate", func() bool { return serial() == second })
	if err := os.WriteFile(lc.KeyFile, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * lc.CertReload) // give a (wrong) reload every chance to happen
	if got := serial(); got != second {
		t.Fatalf("after a broken key file: serial %d, want %d still", got, second)
	}
}

// TestListenConfigNamesTheFlag checks that each bad setting's error names its flag.
func TestListenConfigNamesTheFlag(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		set  func(*ListenConfig)
		flag string
	}{
		{func(c *ListenConfig) { c.Addr = "8443" }, "-whip-listen"},
		{func(c *ListenConfig) { c.CertFile = junk }, "-whip-tls-key"},
		{func(c *ListenConfig) { c.CertFile, c.KeyFile = junk, junk }, "-whip-tls-cert"},
		{func(c *ListenConfig) { c.CertFile, c.KeyFile = filepath.Join(dir, "none"), junk }, "-whip-tls-cert"},
		{func(c *ListenConfig) { c.Limits.MaxConns = -1 }, "-whip-max-conns"},
		{func(c *ListenConfig) { c.Limits.WriteTimeout = -time.Second }, "-whip-write-timeout"},
		{func(c *ListenConfig) { c.CertReload = 0 }, "-whip-tls-reload"},
	} {
		c := DefaultListenConfig()
		tc.set(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.flag) {
			t.Errorf("%+v: %v; want an error naming %s", c, err, tc.flag)
		}
	}
	c := DefaultListenConfig()
	if err := c.Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
}

// TestEventsURLOwnedAndExpiring: a session's event stream answers only its tenant's token (not
// another tenant's, not none), and 404 once the session has ended and its linger passed; so
// does its DELETE.
func TestEventsURLOwnedAndExpiring(t *testing.T) {
	cfg := testConfig()
	cfg.Linger = 500 * time.Millisecond
	e := startEnv(t, 1, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dial(ctx, e.url, tokenAcme, "pcmu")
	if err != nil {
		t.Fatal(err)
	}
	url := c.location + "/events"
	for _, tok := range []string{"", tokenGlobex, "acme-token-wrong-0123"} {
		res, err := getEvents(ctx, url, tok)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusUnauthorized || res.Header.Get("Content-Type") == "text/event-stream" {
			t.Errorf("events with token %q: %d %s; want 401", tok, res.StatusCode, res.Header.Get("Content-Type"))
		}
	}
	events := follow(t, ctx, url, tokenAcme)
	if code, err := c.hangup(); err != nil || code != http.StatusOK {
		t.Fatalf("DELETE: %d %v", code, err)
	}
	ended := false
	for ev := range events { // closes when the session is forgotten, after its linger
		ended = ended || (ev.Kind == "state" && ev.State == stateEnded)
	}
	if !ended {
		t.Error("the stream closed without the call's end")
	}
	res, err := getEvents(ctx, url, tokenAcme)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNotFound {
		t.Errorf("events after the session's linger: %d; want 404", res.StatusCode)
	}
	if code, err := c.hangup(); err != nil || code != http.StatusNotFound {
		t.Errorf("DELETE after the session's linger: %d %v; want 404", code, err)
	}
}
