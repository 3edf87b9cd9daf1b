package sip

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testPKI is a throw-away CA with a server certificate for 127.0.0.1 and a client certificate,
// as PEM files.
type testPKI struct {
	ca                    *x509.CertPool
	caFile                string
	serverCert, serverKey string
	client                tls.Certificate
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "callrouter test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leaf := func(serial int64, name string, usage x509.ExtKeyUsage) ([]byte, []byte) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kd, _ := x509.MarshalECPrivateKey(k)
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd})
	}
	p := &testPKI{ca: x509.NewCertPool(), caFile: filepath.Join(dir, "ca.pem"), serverCert: filepath.Join(dir, "server.pem"),
		serverKey: filepath.Join(dir, "server.key")}
	p.ca.AddCert(caCert)
	sc, sk := leaf(2, "callrouter", x509.ExtKeyUsageServerAuth)
	cc, ck := leaf(3, "sbc", x509.ExtKeyUsageClientAuth)
	for f, b := range map[string][]byte{p.caFile: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), p.serverCert: sc, p.serverKey: sk} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if p.client, err = tls.X509KeyPair(cc, ck); err != nil {
		t.Fatal(err)
	}
	return p
}

// tlsUAC is a SIP client on one TLS connection.
type tlsUAC struct {
	t    testing.TB
	conn *tls.Conn
	dst  string
	in   chan string
}

func dialTLSUAC(t testing.TB, dst string, cfg *tls.Config) (*tlsUAC, error) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", dst, cfg)
	if err != nil {
		return nil, err
	}
	u := &tlsUAC{t: t, conn: c, dst: dst, in: make(chan string, 64)}
	go readSIPStream(c, u.in)
	t.Cleanup(func() { c.Close() })
	return u, nil
}

// message builds a sips request whose Contact is the connection's own address, as UAs on TLS
// do, so that callrouter's requests come back on this connection.
func (u *tlsUAC) message(method, callID, toTag string, cseq int, hdrs, ctype, body string) string {
	local := u.conn.LocalAddr().String()
	m := sipMessage(method, u.dst, "TLS", local, "z9hG4bKtls"+strconv.FormatInt(time.Now().UnixNano(), 10), callID, toTag, cseq, hdrs, ctype, body)
	m = strings.Replace(m, method+" sip:svc@", method+" sips:svc@", 1)
	m = strings.Replace(m, "To: <sip:svc@", "To: <sips:svc@", 1)
	return strings.Replace(m, "<sip:alice@"+local+";transport=tls>", "<sips:alice@"+local+">", 1)
}

func (u *tlsUAC) request(method, callID, toTag string, cseq int, hdrs, ctype, body string) string {
	u.t.Helper()
	if _, err := u.conn.Write([]byte(u.message(method, callID, toTag, cseq, hdrs, ctype, body))); err != nil {
		u.t.Fatal(err)
	}
	if method == "ACK" {
		return ""
	}
	return awaitFinal(u.t, u.in, callID, method)
}

// TestSIPOverTLS places a sips call over TLS: the handshake, INVITE and 200 OK (whose Contact
// is a sips URI on the TLS port and whose Via says TLS) are timed; RTP gives its frames; a BYE
// for the dialog over plain TCP is refused as a downgrade; the RTP timeout's BYE comes back on
// the TLS connection.
func TestSIPOverTLS(t *testing.T) {
	pki := newTestPKI(t)
	e := startEnv(t, 1, func(c *Config) {
		c.TLSListen, c.TLSCert, c.TLSKey = "127.0.0.1:0", pki.serverCert, pki.serverKey
		c.RTPTimeout = 2 * time.Second
	})
	dst := e.srv.TLSAddr().String()
	u := newUAC(t, e.addr) // for its RTP socket and offer
	id := newCallID("tls")
	start := time.Now()
	caller, err := dialTLSUAC(t, dst, &tls.Config{RootCAs: pki.ca})
	if err != nil {
		t.Fatal(err)
	}
	handshake := time.Since(start)
	res := caller.request("INVITE", id, "", 1, "", "application/sdp", u.offer())
	took := time.Since(start)
	if codeOf(res) != "200" {
		t.Fatalf("INVITE over TLS: %s", res)
	}
	t.Logf("TLS handshake %v, handshake + INVITE → 200 OK %v", handshake, took)
	if want := "<sips:callrouter@" + dst + ">"; !strings.Contains(headerRe("Contact").FindStringSubmatch(res)[1], want) {
		t.Errorf("200 OK Contact %q, want %s", headerRe("Contact").FindStringSubmatch(res)[1], want)
	}
	if !regexp.MustCompile(`(?m)^Via: SIP/2.0/TLS `).MatchString(res) {
		t.Errorf("200 OK Via is not TLS:\n%s", res)
	}
	tag := toTagRe.FindStringSubmatch(res)[1]
	caller.request("ACK", id, tag, 1, "", "", "")
	port, _ := strconv.Atoi(mPortRe.FindStringSubmatch(res)[1])
	sendRTP(t, u.rtp, port, 25, 100, 0)

	plain := newTCPUAC(t, e.addr, net.IPv4(127, 0, 0, 1))
	if res := plain.request("BYE", id, tag, 2, "", "", ""); codeOf(res) != "403" {
		t.Errorf("BYE of a TLS dialog over plain TCP: %s", res)
	}
	// The RTP has stopped: callrouter hangs up over TLS, on this connection.
	deadline := time.After(15 * time.Second)
	for bye := ""; bye == ""; {
		select {
		case m, ok := <-caller.in:
			if !ok {
				t.Fatal("TLS connection closed before callrouter's BYE")
			}
			if strings.HasPrefix(m, "BYE sips:alice@") && strings.Contains(m, id) {
				bye = m
				if !regexp.MustCompile(`(?m)^Via: SIP/2.0/TLS `).MatchString(m) {
					t.Errorf("callrouter's BYE Via is not TLS:\n%s", m)
				}
				ok200 := "SIP/2.0 200 OK\r\n"
				for _, h := range []string{"Via", "From", "To", "Call-ID", "CSeq"} {
					ok200 += h + ": " + headerRe(h).FindStringSubmatch(m)[1] + "\r\n"
				}
				if _, err := caller.conn.Write([]byte(ok200 + "Content-Length: 0\r\n\r\n")); err != nil {
					t.Fatal(err)
				}
			}
		case <-deadline:
			t.Fatal("no BYE over TLS after the RTP timeout")
		}
	}
	eventually(t, 10*time.Second, "the worker to stop the call", func() bool { return len(callKeys()) == 1 })
	l := rec.snapshot(callKeys()[0] + "/0")
	if real := len(l.seqs) - l.gapFilled; real != 25 {
		t.Errorf("%d real frames, want 25", real)
	}
}

// TestSIPOverTLSClientCerts requires client certificates: a peer without one cannot get a
// request through; one with a certificate from the CA can. A sips request-URI over plain UDP is
// refused.
func TestSIPOverTLSClientCerts(t *testing.T) {
	pki := newTestPKI(t)
	e := startEnv(t, 1, func(c *Config) {
		c.TLSListen, c.TLSCert, c.TLSKey, c.TLSClientCA = "127.0.0.1:0", pki.serverCert, pki.serverKey, pki.caFile
	})
	dst := e.srv.TLSAddr().String()
	if anon, err := dialTLSUAC(t, dst, &tls.Config{RootCAs: pki.ca}); err == nil {
		// TLS 1.3 reports the refused certificate on the first read.
		_, _ = anon.conn.Write([]byte(anon.message("OPTIONS", newCallID("anon"), "", 1, "", "", "")))
		select {
		case m, ok := <-anon.in:
			if ok {
				t.Errorf("a peer without a client certificate got an answer: %s", m)
			}
		case <-time.After(10 * time.Second):
			t.Error("a peer without a client certificate was neither refused nor answered")
		}
	}
	peer, err := dialTLSUAC(t, dst, &tls.Config{RootCAs: pki.ca, Certificates: []tls.Certificate{pki.client}})
	if err != nil {
		t.Fatal(err)
	}
	if res := peer.request("OPTIONS", newCallID("mtls"), "", 1, "", "", ""); codeOf(res) != "200" {
		t.Errorf("OPTIONS with a client certificate: %s", res)
	}
	u := newUAC(t, e.addr)
	msg := sipMessage("INVITE", e.addr, "UDP", u.local(), "z9hG4bKsipsudp", newCallID("sipsudp"), "", 1, "", "application/sdp", u.offer())
	u.send(strings.Replace(msg, "INVITE sip:", "INVITE sips:", 1))
	if res := u.await("sipsudp", "INVITE"); codeOf(res) != "416" {
		t.Errorf("sips INVITE over UDP: %s", res)
	}
}

// TestTLSAnswerTimes (CALLROUTER_SIP_TLS_CALLS=<calls>) places that many calls one after the
// other over a new TLS connection each, and as many over UDP, and prints the percentiles of the
// TLS handshake, of handshake + INVITE → 200 OK, and of INVITE → 200 OK over UDP (client side,
// placement included).
func TestTLSAnswerTimes(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("CALLROUTER_SIP_TLS_CALLS"))
	if n <= 0 {
		t.Skip("set CALLROUTER_SIP_TLS_CALLS=<calls> to measure")
	}
	pki := newTestPKI(t)
	e := startEnvW(t, 1, func(wc *workerConfig) { wc.Capacity = n + 10 }, func(c *Config) {
		c.TLSListen, c.TLSCert, c.TLSKey = "127.0.0.1:0", pki.serverCert, pki.serverKey
		c.InviteRate = 0 // every call here comes from 127.0.0.1
	})
	u := newUAC(t, e.addr)
	var hs, tlsCall, udpCall []time.Duration
	for i := range n {
		id := newCallID("tlsfig")
		start := time.Now()
		c, err := dialTLSUAC(t, e.srv.TLSAddr().String(), &tls.Config{RootCAs: pki.ca})
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, time.Since(start))
		res := c.request("INVITE", id, "", 1, "", "application/sdp", u.offer())
		tlsCall = append(tlsCall, time.Since(start))
		if codeOf(res) != "200" {
			t.Fatalf("call %d: %s", i, res)
		}
		tag := toTagRe.FindStringSubmatch(res)[1]
		c.request("ACK", id, tag, 1, "", "", "")
		c.request("BYE", id, tag, 2, "", "", "")
		c.conn.Close()

		id = newCallID("udpfig")
		start = time.Now()
		res = u.request("INVITE", id, "", 1, "", "application/sdp", u.offer())
		udpCall = append(udpCall, time.Since(start))
		tag = toTagRe.FindStringSubmatch(res)[1]
		u.request("ACK", id, tag, 1, "", "", "")
		u.request("BYE", id, tag, 2, "", "", "")
	}
	pct := func(d []time.Duration) string {
		slices.Sort(d)
		at := func(p float64) time.Duration { return d[min(len(d)-1, int(p*float64(len(d))))] }
		return fmt.Sprintf("p50 %v p90 %v p99 %v", at(0.5).Round(10*time.Microsecond), at(0.9).Round(10*time.Microsecond), at(0.99).Round(10*time.Microsecond))
	}
	t.Logf("%d calls: TLS handshake %s; TLS handshake + INVITE → 200 OK %s; UDP INVITE → 200 OK %s", n, pct(hs), pct(tlsCall), pct(udpCall))
}

// TestCertReload replaces the certificate files (a rotated Secret): the next handshake after the
// check interval presents the new certificate; a broken replacement keeps the last good one.
func TestCertReload(t *testing.T) {
	first, second := newTestPKI(t), newTestPKI(t)
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	install := func(p *testPKI) {
		for src, dst := range map[string]string{p.serverCert: cert, p.serverKey: key} {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst+".new", b, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(dst+".new", dst); err != nil {
				t.Fatal(err)
			}
		}
	}
	install(first)
	r, err := newCertReloader(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	current := func() string { return string(r.get().Certificate[0]) } // the leaf's DER
	before := current()
	install(second)
	// Past the check interval, and with a modification time that surely differs.
	future := time.Now().Add(time.Minute)
	_ = os.Chtimes(cert, future, future)
	r.mu.Lock()
	r.checked = time.Time{}
	r.mu.Unlock()
	after := current()
	if after == before {
		t.Fatal("the new certificate was not loaded")
	}
	if err := os.WriteFile(key, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	r.checked = time.Time{}
	r.mu.Unlock()
	if current() != after {
		t.Error("a broken key replaced the working certificate")
	}
}
