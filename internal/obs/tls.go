package obs

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	stdlog "log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/net/netutil"
)

// KeyPair is a TLS certificate and key read from files, and read again on SIGHUP (Watch) or when
// either file changes, so a renewed certificate (cert-manager rewriting a Secret's files) is
// served without a restart. A pair that fails to load keeps the one in use.
type KeyPair struct {
	certFile, keyFile string

	mu    sync.Mutex
	cert  *tls.Certificate
	stamp [2]fileStamp
}

type fileStamp struct {
	mod  time.Time
	size int64
	data []byte // the file's contents: a Secret's files are swapped by symlink, same mtime
}

// LoadKeyPair reads a PEM certificate (chain) and its key; the error says which file is wrong.
func LoadKeyPair(certFile, keyFile string) (*KeyPair, error) {
	k := &KeyPair{certFile: certFile, keyFile: keyFile}
	if err := k.Reload(); err != nil {
		return nil, err
	}
	return k, nil
}

// Reload reads the files again; on error the pair in use stays.
func (k *KeyPair) Reload() error {
	cb, err := os.ReadFile(k.certFile)
	if err != nil {
		return fmt.Errorf("certificate: %w", err)
	}
	kb, err := os.ReadFile(k.keyFile)
	if err != nil {
		return fmt.Errorf("key: %w", err)
	}
	cert, err := tls.X509KeyPair(cb, kb)
	if err != nil {
		return fmt.Errorf("certificate %s and key %s: %w", k.certFile, k.keyFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return fmt.Errorf("certificate %s: %w", k.certFile, err)
		}
	}
	k.mu.Lock()
	k.cert = &cert
	k.stamp = [2]fileStamp{stampOf(k.certFile, cb), stampOf(k.keyFile, kb)}
	k.mu.Unlock()
	return nil
}

func stampOf(path string, data []byte) fileStamp {
	st := fileStamp{data: data}
	if fi, err := os.Stat(path); err == nil {
		st.mod, st.size = fi.ModTime(), fi.Size()
	}
	return st
}

// changed reports whether either file differs from what was loaded.
func (k *KeyPair) changed() bool {
	k.mu.Lock()
	stamp := k.stamp
	k.mu.Unlock()
	for i, p := range []string{k.certFile, k.keyFile} {
		fi, err := os.Stat(p)
		if err != nil {
			return false // being replaced: look again next time
		}
		if !fi.ModTime().Equal(stamp[i].mod) || fi.Size() != stamp[i].size {
			return true
		}
		b, err := os.ReadFile(p)
		if err == nil && !bytes.Equal(b, stamp[i].data) {
			return true
		}
	}
	return false
}

// Leaf returns the certificate in use.
func (k *KeyPair) Leaf() *x509.Certificate {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cert.Leaf
}

// GetCertificate is a tls.Config.GetCertificate serving the pair in use.
func (k *KeyPair) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cert, nil
}

// TLSConfig returns a server configuration (TLS 1.2 and up) that serves the pair in use.
func (k *KeyPair) TLSConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: k.GetCertificate}
}

// Watch reloads the pair on SIGHUP and whenever either file changes (looked at every interval),
// until ctx ends. A failed reload is logged and the pair in use stays.
func (k *KeyPair) Watch(ctx context.Context, every time.Duration, log zerolog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		case <-t.C:
			if !k.changed() {
				continue
			}
		}
		if err := k.Reload(); err != nil {
			log.Error().Err(err).Msg("TLS certificate reload failed; serving the previous one")
			continue
		}
		leaf := k.Leaf()
		log.Info().Str("subject", leaf.Subject.String()).Time("not_after", leaf.NotAfter).Msg("TLS certificate loaded")
	}
}

// ListenHandler binds addr with the limits l and prepares a server of h alone: none of Paths
// (health and metrics stay on the private listener of Listen). With tc it serves HTTPS (HTTP/2
// and HTTP/1.1). The server's own errors (failed TLS handshakes from scanners, ...) go to log at
// debug level. Run starts it.
func ListenHandler(addr string, h http.Handler, l Limits, tc *tls.Config, log zerolog.Logger) (*Server, error) {
	if h == nil {
		return nil, errors.New("obs: nil handler")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	if l.MaxConnsPerSource > 0 {
		ln = &sourceListener{Listener: ln, max: l.MaxConnsPerSource, open: map[string]int{}}
	}
	if l.MaxConns > 0 {
		ln = netutil.LimitListener(ln, l.MaxConns)
	}
	return &Server{ln: ln, tls: tc != nil, srv: &http.Server{Handler: h, TLSConfig: tc, ReadHeaderTimeout: l.ReadHeaderTimeout,
		ReadTimeout: l.ReadTimeout, WriteTimeout: l.WriteTimeout, IdleTimeout: l.IdleTimeout, MaxHeaderBytes: l.MaxHeaderBytes,
		ErrorLog: stdlog.New(debugWriter{log}, "", 0)}}, nil
}

// debugWriter logs each line written at debug level.
type debugWriter struct{ log zerolog.Logger }

func (w debugWriter) Write(b []byte) (int, error) {
	w.log.Debug().Msg(string(bytes.TrimSpace(b)))
	return len(b), nil
}
