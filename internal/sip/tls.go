package sip

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// certCheckEvery bounds how often the certificate files are looked at for a change.
const certCheckEvery = 10 * time.Second

// certReloader serves the TLS certificate from its PEM files and reloads it when either file
// changes (a rotated Kubernetes Secret), so that a new certificate needs no restart and no
// call is lost. A reload that fails keeps the last good certificate.
type certReloader struct {
	certFile, keyFile string

	mu      sync.Mutex
	cert    *tls.Certificate
	mod     [2]time.Time
	checked time.Time
}

func newCertReloader(certFile, keyFile string) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile}
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *certReloader) stat() ([2]time.Time, error) {
	var mod [2]time.Time
	for i, f := range []string{r.certFile, r.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return mod, err
		}
		mod[i] = fi.ModTime()
	}
	return mod, nil
}

// load reads the key pair; the caller holds mu or owns r.
func (r *certReloader) load() error {
	mod, err := r.stat()
	if err != nil {
		return err
	}
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return err
	}
	r.cert, r.mod = &c, mod
	return nil
}

// get returns the current certificate, reloading it when its files changed.
func (r *certReloader) get() *tls.Certificate {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := time.Now(); now.Sub(r.checked) >= certCheckEvery {
		r.checked = now
		if mod, err := r.stat(); err == nil && mod != r.mod {
			_ = r.load()
		}
	}
	return r.cert
}

// tlsConfigs builds the server side of the SIP TLS listener and the client side of the TLS
// connections callrouter opens itself (a BYE to a peer's Contact when its connection is gone).
// TLS 1.2 is the minimum. With TLSClientCA, peers must present a certificate it signed, and
// callrouter verifies the peers it dials against it; without, against the system roots.
func tlsConfigs(c *Config) (server, client *tls.Config, err error) {
	certs, err := newCertReloader(c.TLSCert, c.TLSKey)
	if err != nil {
		return nil, nil, fmt.Errorf("sip: TLS certificate (-sip-tls-cert, -sip-tls-key): %w", err)
	}
	server = &tls.Config{MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return certs.get(), nil }}
	client = &tls.Config{MinVersion: tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return certs.get(), nil }}
	if c.TLSClientCA != "" {
		pem, err := os.ReadFile(c.TLSClientCA)
		if err != nil {
			return nil, nil, fmt.Errorf("sip: TLS client CA (-sip-tls-client-ca): %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nil, errors.New("sip: TLS client CA (-sip-tls-client-ca): no PEM certificate in " + c.TLSClientCA)
		}
		server.ClientAuth, server.ClientCAs = tls.RequireAndVerifyClientCert, pool
		client.RootCAs = pool
	}
	return server, client, nil
}
