package cli

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/obs"
	"github.com/rs/zerolog"
)

// Checked is the one JSON line -check-config prints: what the binary would serve, and the
// configuration it would serve it with.
type Checked struct {
	Component string            `json:"component"`
	ID        string            `json:"id"`
	HTTP      string            `json:"http"`  // the -http listen address
	Paths     []string          `json:"paths"` // served on HTTP: obs.Paths
	Flags     map[string]string `json:"flags"` // every flag's effective value; URL passwords redacted
}

// Check validates what Main would otherwise only find out by connecting and listening: the NATS
// settings (URLs parse, credential and TLS files are readable), the -http address, and the
// service itself (build runs with a nil connection, so processors, WHIP and SIP settings are
// checked by their own constructors). It prints Checked as one JSON line to out and returns 0, or
// prints the problem, naming the flag, to errOut and returns 2. It connects to nothing and binds
// nothing.
func Check(component, id string, c *Common, build Build, log zerolog.Logger, out, errOut io.Writer) int {
	fail := func(err error) int {
		fmt.Fprintf(errOut, "%s: %v\n", component, err)
		return 2
	}
	if err := CheckNATS(c.NATS); err != nil {
		return fail(err)
	}
	if err := checkListen(c.HTTP); err != nil {
		return fail(fmt.Errorf("flag -http: %w", err))
	}
	h, reg := &obs.Health{}, obs.NewRegistry()
	svc, err := build(nil, log, reg, h)
	if err != nil {
		return fail(fmt.Errorf("bad configuration: %w", err))
	}
	if m, ok := svc.(Mounter); ok {
		if err := mount(m, obs.NewMux(h, reg)); err != nil {
			return fail(err)
		}
	}
	res := Checked{Component: component, ID: id, HTTP: c.HTTP, Paths: obs.Paths(), Flags: map[string]string{}}
	if c.fs != nil {
		c.fs.VisitAll(func(f *flag.Flag) { res.Flags[f.Name] = redactURLs(f.Value.String()) })
	}
	if err := json.NewEncoder(out).Encode(res); err != nil {
		return fail(err)
	}
	return 0
}

// CheckNATS reports the first bad NATS setting, naming its flag (the names CommonFlags and
// NATSCredentialFlags register): the URLs, the pairing of the credentials, and that each file
// opens.
func CheckNATS(cfg bus.Config) error {
	if strings.TrimSpace(cfg.URL) == "" {
		return errors.New("flag -nats: no server URL")
	}
	for _, u := range strings.Split(cfg.URL, ",") {
		u = strings.TrimSpace(u)
		if !strings.Contains(u, "://") {
			u = "nats://" + u // what nats.go does with host:port
		}
		p, err := url.Parse(u)
		if err != nil {
			return fmt.Errorf("flag -nats: %w", err)
		}
		switch p.Scheme {
		case "nats", "tls", "ws", "wss":
		default:
			return fmt.Errorf("flag -nats: %s: scheme %q is not nats, tls, ws or wss", p.Redacted(), p.Scheme)
		}
		if p.Host == "" {
			return fmt.Errorf("flag -nats: %s has no host", p.Redacted())
		}
	}
	if (cfg.TLSCert == "") != (cfg.TLSKey == "") {
		return errors.New("flags -nats-tls-cert and -nats-tls-key must be given together")
	}
	if cfg.NkeyFile != "" && cfg.CredsFile != "" {
		return errors.New("flags -nats-nkey and -nats-creds: give one")
	}
	if cfg.ReconnectBuf <= 0 {
		return fmt.Errorf("flag -nats-reconnect-buf: %d must be positive", cfg.ReconnectBuf)
	}
	for _, f := range []struct{ flag, path string }{
		{"nats-creds", cfg.CredsFile}, {"nats-nkey", cfg.NkeyFile}, {"nats-tls-cert", cfg.TLSCert}, {"nats-tls-key", cfg.TLSKey}, {"nats-tls-ca", cfg.TLSCA},
	} {
		if f.path == "" {
			continue
		}
		file, err := os.Open(f.path)
		if err != nil {
			return fmt.Errorf("flag -%s: %w", f.flag, err)
		}
		_ = file.Close()
	}
	if err := cfg.Validate(); err != nil { // whatever bus checks beyond the above
		return fmt.Errorf("NATS flags: %w", err)
	}
	return nil
}

// checkListen checks a host:port listen address without binding it.
func checkListen(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	return nil
}

// mount runs m.Mount on mux, turning the panic of a conflicting pattern into an error.
func mount(m Mounter, mux *http.ServeMux) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("HTTP handlers conflict: %v", r)
		}
	}()
	m.Mount(mux)
	return nil
}

// redactURLs replaces the password of every URL in a comma-separated value.
func redactURLs(v string) string {
	if !strings.Contains(v, "://") {
		return v
	}
	parts := strings.Split(v, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			parts[i] = u.Redacted()
		}
	}
	return strings.Join(parts, ",")
}
