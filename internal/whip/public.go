package whip

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/callrouter/callrouter/internal/obs"
	"github.com/callrouter/callrouter/internal/whip/web"
	"github.com/rs/zerolog"
)

// ListenConfig configures the public listener: the one socket browsers and WHIP clients reach,
// serving the endpoint and the call page and nothing else. /metrics, /healthz and /readyz stay
// on the binary's private -http listener.
type ListenConfig struct {
	// Addr is the TCP address (-whip-listen).
	Addr string
	// CertFile and KeyFile (-whip-tls-cert, -whip-tls-key), both or neither, make it serve HTTPS:
	// a browser grants the microphone only to a secure origin (https, or http on localhost).
	// The pair is read again on SIGHUP and when either file changes (looked at every
	// CertReload).
	CertFile, KeyFile string
	CertReload        time.Duration
	// Limits bound its clients (-whip-max-conns, -whip-read-timeout, ...), apart from the private
	// listener's.
	Limits obs.Limits
}

// DefaultListenConfig returns the documented defaults: TCP 8443 (media is UDP 8443), plain HTTP
// until a certificate is given.
func DefaultListenConfig() ListenConfig {
	return ListenConfig{Addr: ":8443", CertReload: 10 * time.Second, Limits: obs.DefaultLimits()}
}

// TLS reports whether the listener serves HTTPS.
func (c *ListenConfig) TLS() bool { return c.CertFile != "" }

// Validate reports every bad setting, naming its flag, and reads the key pair when one is given.
func (c *ListenConfig) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		errs = append(errs, fmt.Errorf("flag -whip-listen: %q: %w", c.Addr, err))
	}
	switch {
	case (c.CertFile == "") != (c.KeyFile == ""):
		errs = append(errs, errors.New("flags -whip-tls-cert and -whip-tls-key: give both or neither"))
	case c.CertFile != "":
		if _, err := obs.LoadKeyPair(c.CertFile, c.KeyFile); err != nil {
			errs = append(errs, fmt.Errorf("flags -whip-tls-cert and -whip-tls-key: %w", err))
		}
	}
	if c.CertReload <= 0 {
		errs = append(errs, fmt.Errorf("flag -whip-tls-reload: %v must be positive", c.CertReload))
	}
	if err := c.Limits.CheckFlags("whip"); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Public is the public listener serving one handler (PublicHandler) over HTTP or HTTPS.
type Public struct {
	cfg ListenConfig
	srv *obs.Server
	kp  *obs.KeyPair
	log zerolog.Logger
}

// ListenPublic binds cfg.Addr (and reads the key pair) for h; Run serves it.
func ListenPublic(cfg ListenConfig, h http.Handler, log zerolog.Logger) (*Public, error) {
	p := &Public{cfg: cfg, log: log.With().Str("listener", "whip").Logger()}
	var err error
	if cfg.TLS() {
		if p.kp, err = obs.LoadKeyPair(cfg.CertFile, cfg.KeyFile); err != nil {
			return nil, fmt.Errorf("flags -whip-tls-cert and -whip-tls-key: %w", err)
		}
		p.srv, err = obs.ListenHandler(cfg.Addr, h, cfg.Limits, p.kp.TLSConfig(), p.log)
	} else {
		p.srv, err = obs.ListenHandler(cfg.Addr, h, cfg.Limits, nil, p.log)
	}
	if err != nil {
		return nil, fmt.Errorf("flag -whip-listen: %w", err)
	}
	return p, nil
}

// Addr returns the bound address.
func (p *Public) Addr() string { return p.srv.Addr() }

// URL returns the base URL of the bound address (https when serving TLS).
func (p *Public) URL() string {
	if p.kp != nil {
		return "https://" + p.Addr()
	}
	return "http://" + p.Addr()
}

// Run serves until ctx ends (then shuts down, as obs.Server.Run), reloading the key pair on
// SIGHUP or change meanwhile.
func (p *Public) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if p.kp != nil {
		wg.Add(1)
		go func() { defer wg.Done(); p.kp.Watch(wctx, p.cfg.CertReload, p.log) }()
	}
	p.log.Info().Str("addr", p.Addr()).Bool("tls", p.kp != nil).Msg("whip listener serving")
	return p.srv.Run(ctx)
}

// PublicHandler returns what the public listener serves: the endpoint at its path (and below),
// the call page at /call/, and a redirect from / to it. Nothing else answers (404): health and
// metrics are on the private listener.
func (s *Server) PublicHandler() http.Handler {
	mux := http.NewServeMux()
	s.Mount(mux)
	mux.Handle("/call/", http.StripPrefix("/call", web.Handler()))
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/call/", http.StatusFound)
	})
	return mux
}
