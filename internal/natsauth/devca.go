package natsauth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// DevTLS files, written by WriteDevTLS into one directory.
const (
	CAFile         = "ca.crt"
	ServerCertFile = "server.crt" // the NATS nodes: client and route connections (server and client auth)
	ServerKeyFile  = "server.key"
	ClientCertFile = "client.crt" // callrouter's components, when the servers verify clients
	ClientKeyFile  = "client.key"
)

// WriteDevTLS creates, offline, a development CA and a server and a client certificate signed by
// it (ECDSA P-256), valid for the given DNS names and IP addresses plus localhost and 127.0.0.1.
// The CA's key is not kept: to add a host, run it again and roll every file. Not for production:
// use your PKI (cert-manager, Vault) there.
func WriteDevTLS(dir string, hosts []string, valid time.Duration) error {
	if valid <= 0 {
		return errors.New("natsauth: certificate validity must be positive")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	start := time.Now()
	now, until := start.Add(-time.Hour), start.Add(valid) // tolerate a little clock skew
	serial := func() *big.Int {
		n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
		return n
	}
	ca := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: "callrouter development CA"},
		NotBefore: now, NotAfter: until, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	if ca, err = x509.ParseCertificate(caDER); err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, CAFile), "CERTIFICATE", caDER, 0o644); err != nil {
		return err
	}
	leaf := func(cn, certFile, keyFile string, usage []x509.ExtKeyUsage, names []string) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: cn},
			NotBefore: now, NotAfter: until, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: usage}
		for _, h := range names {
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		if err := writePEM(filepath.Join(dir, certFile), "CERTIFICATE", der, 0o644); err != nil {
			return err
		}
		return writePEM(filepath.Join(dir, keyFile), "PRIVATE KEY", kder, 0o600)
	}
	names := append([]string{"localhost", "127.0.0.1"}, hosts...)
	both := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} // routes dial each other
	if err := leaf("callrouter nats", ServerCertFile, ServerKeyFile, both, names); err != nil {
		return err
	}
	return leaf("callrouter client", ClientCertFile, ClientKeyFile, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil)
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}
