package audiohook

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/callrouter/callrouter/internal/tokenfile"
)

// Key is one AudioHook API key: the tenant its sessions belong to and the client secret that
// signs its upgrade requests (base64-decoded). An empty secret accepts unsigned requests, as the
// reference server does; a key file must say so explicitly with "-".
type Key struct {
	Tenant string
	Secret []byte
}

// Config configures the AudioHook server.
type Config struct {
	// Path is the WebSocket endpoint, e.g. /api/v1/audiohook/ws.
	Path string
	// Keys maps an X-API-KEY to its tenant and secret. KeyFile, when set, is read by LoadKeys.
	Keys    map[string]Key
	KeyFile string
	// MaxSessions bounds the sessions on this node and MaxSessionsPerTenant (0: no bound) those
	// of one tenant; past either the upgrade gets 503 with Retry-After.
	MaxSessions          int
	MaxSessionsPerTenant int
	// UpgradeRate bounds upgrade requests per second from one source address (a token bucket of
	// UpgradeBurst), checked before the signature; past it 429. 0 disables it. Genesys connects
	// from few addresses, and behind a proxy every client shares one: size it for the busiest.
	UpgradeRate  float64
	UpgradeBurst int
	// RetryAfter is the Retry-After of a 503 when this node refuses a session.
	RetryAfter time.Duration
	// SignatureMaxAge is how old a signature's "created" may be, ClockSkew how far in the future.
	SignatureMaxAge time.Duration
	ClockSkew       time.Duration
	// FailDelay is the least time a refused signature takes to answer (no timing oracle).
	FailDelay time.Duration
	// OpenTimeout bounds the wait for the client's "open" after the upgrade.
	OpenTimeout time.Duration
	// IdleTimeout ends a session that sends nothing (audio, ping) for this long.
	IdleTimeout time.Duration
	// CloseTimeout bounds the wait for the client's "close" after a "disconnect", and for the
	// client to close the WebSocket after "closed".
	CloseTimeout time.Duration
	// MaxAhead bounds how far the audio position may run ahead of the wall clock since "opened"
	// (a client sending faster than real time is disconnected).
	MaxAhead time.Duration
	// MaxBinary bounds one binary (audio) message in bytes; text messages are bounded by the
	// protocol's 65,535 characters.
	MaxBinary int
	// DrainTimeout is how long Run, once its context ends, lets the sessions up finish (new ones
	// get 503); then it disconnects the rest.
	DrainTimeout time.Duration
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Path:                 "/api/v1/audiohook/ws",
		MaxSessions:          1000,
		MaxSessionsPerTenant: 500,
		RetryAfter:           5 * time.Second,
		UpgradeRate:          50,
		UpgradeBurst:         200,
		SignatureMaxAge:      10 * time.Second,
		ClockSkew:            3 * time.Second,
		FailDelay:            500 * time.Millisecond,
		OpenTimeout:          5 * time.Second,
		IdleTimeout:          30 * time.Second,
		CloseTimeout:         5 * time.Second,
		MaxAhead:             5 * time.Second,
		MaxBinary:            64 << 10,
		DrainTimeout:         30 * time.Second,
	}
}

// maxText is the protocol's bound on one text message.
const maxText = 65535

// Validate reports every bad field, naming its flag.
func (c *Config) Validate() error {
	var errs []error
	if !strings.HasPrefix(c.Path, "/") {
		errs = append(errs, fmt.Errorf("audiohook: -audiohook-path %q must start with /", c.Path))
	}
	if len(c.Keys) == 0 {
		errs = append(errs, errors.New("audiohook: no API keys (-audiohook-key-file)"))
	}
	if c.MaxSessions < 1 || c.MaxSessionsPerTenant < 0 {
		errs = append(errs, errors.New("audiohook: -audiohook-max-sessions must be positive and -audiohook-max-sessions-per-tenant at least 0"))
	}
	for name, d := range map[string]time.Duration{"-audiohook-open-timeout": c.OpenTimeout, "-audiohook-idle-timeout": c.IdleTimeout,
		"-audiohook-close-timeout": c.CloseTimeout, "-audiohook-max-ahead": c.MaxAhead, "-audiohook-signature-max-age": c.SignatureMaxAge} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("audiohook: %s %v must be positive", name, d))
		}
	}
	if c.ClockSkew < 0 || c.FailDelay < 0 || c.DrainTimeout < 0 || c.RetryAfter < time.Second {
		errs = append(errs, errors.New("audiohook: clock skew, fail delay and drain timeout must not be negative, retry-after at least 1s"))
	}
	if c.UpgradeRate < 0 || c.UpgradeBurst < 1 {
		errs = append(errs, errors.New("audiohook: -audiohook-upgrade-rate must not be negative and -audiohook-upgrade-burst at least 1"))
	}
	if c.MaxBinary < 320 || c.MaxBinary > 1<<20 {
		errs = append(errs, fmt.Errorf("audiohook: -audiohook-max-binary %d must be 320 bytes to 1 MiB", c.MaxBinary))
	}
	return errors.Join(errs...)
}

// LoadKeys reads KeyFile (when set) into Keys.
func (c *Config) LoadKeys() error {
	if c.KeyFile == "" {
		return nil
	}
	f, err := os.Open(c.KeyFile)
	if err != nil {
		return err
	}
	defer f.Close()
	keys, err := ParseKeys(f)
	if err != nil {
		return err
	}
	c.Keys = keys
	return nil
}

// ParseKeys reads a key file (internal/tokenfile): one "<tenant> <api-key> <base64-client-secret>"
// a line ("-" as the secret accepts unsigned requests for that key), blank lines and lines
// starting with '#' ignored.
func ParseKeys(r io.Reader) (map[string]Key, error) {
	es, err := tokenfile.Parse(r, tokenfile.Format{Usage: "<tenant> <api-key> <base64-secret or ->", MinToken: 8, Fields: 1})
	if err != nil {
		return nil, fmt.Errorf("audiohook: key file: %w", err)
	}
	out := make(map[string]Key, len(es))
	for _, e := range es {
		k := Key{Tenant: e.Tenant}
		if e.Fields[0] != "-" {
			s, err := base64.StdEncoding.DecodeString(e.Fields[0])
			if err != nil || len(s) < 16 {
				return nil, fmt.Errorf("audiohook: key file: line %d: the client secret must be base64 of at least 16 bytes", e.Line)
			}
			k.Secret = s
		}
		out[e.Token] = k
	}
	return out, nil
}
