package twilio

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/callrouter/callrouter/internal/timeline"
	"github.com/callrouter/callrouter/internal/tokenfile"
)

// Config configures the Media Streams server.
type Config struct {
	// Path is the WebSocket endpoint a <Stream url="wss://host/Path"> points at (no query string:
	// Twilio refuses one).
	Path string
	// Tokens maps a token to its tenant: the stream's <Parameter name="token" value="…"/>
	// (start.customParameters.token) names the call's tenant. TokenFile, when set, is read by
	// LoadTokens: one "<tenant> <token>" a line.
	Tokens    map[string]string
	TokenFile string
	// TokenParam is the custom parameter that carries the token.
	TokenParam string
	// MaxSessions and MaxSessionsPerTenant (0: no bound) bound the streams; past them the upgrade
	// gets 503 with Retry-After (and a start for a full tenant is refused).
	MaxSessions          int
	MaxSessionsPerTenant int
	RetryAfter           time.Duration
	// UpgradeRate bounds upgrade requests per second from one source address (a token bucket of
	// UpgradeBurst); past it 429. 0 disables it. The upgrade carries no credential (the token
	// comes in start), so this and MaxSessions with StartTimeout bound what an unknown peer can
	// hold. Twilio connects from few addresses: size it for the busiest account.
	UpgradeRate  float64
	UpgradeBurst int
	// StartTimeout bounds the wait for "start" after the upgrade; IdleTimeout ends a stream that
	// sends nothing for that long.
	StartTimeout time.Duration
	IdleTimeout  time.Duration
	// PlaceTimeout bounds placing the call after "start" (ingest's retries included): the read
	// loop waits for it while Twilio keeps sending media.
	PlaceTimeout time.Duration
	// ReorderWindow is how long a media message waits for earlier chunks (Twilio's frames may
	// arrive out of order); MaxAhead bounds how far media timestamps may run ahead of the wall
	// clock since "start".
	ReorderWindow time.Duration
	MaxAhead      time.Duration
	// DrainTimeout is how long Run, once its context ends, lets streams finish; then it closes
	// them (1001).
	DrainTimeout time.Duration
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Path:                 "/twilio/media",
		TokenParam:           "token",
		MaxSessions:          1000,
		MaxSessionsPerTenant: 500,
		RetryAfter:           5 * time.Second,
		UpgradeRate:          50,
		UpgradeBurst:         200,
		StartTimeout:         5 * time.Second,
		IdleTimeout:          30 * time.Second,
		PlaceTimeout:         5 * time.Second,
		ReorderWindow:        60 * time.Millisecond,
		MaxAhead:             5 * time.Second,
		DrainTimeout:         30 * time.Second,
	}
}

// Validate reports every bad field, naming its flag.
func (c *Config) Validate() error {
	var errs []error
	if !strings.HasPrefix(c.Path, "/") {
		errs = append(errs, fmt.Errorf("twilio: -twilio-path %q must start with /", c.Path))
	}
	if len(c.Tokens) == 0 {
		errs = append(errs, errors.New("twilio: no tokens (-twilio-token-file)"))
	}
	if c.TokenParam == "" {
		errs = append(errs, errors.New("twilio: -twilio-token-param must not be empty"))
	}
	if c.MaxSessions < 1 || c.MaxSessionsPerTenant < 0 {
		errs = append(errs, errors.New("twilio: -twilio-max-sessions must be positive and -twilio-max-sessions-per-tenant at least 0"))
	}
	for name, d := range map[string]time.Duration{"-twilio-start-timeout": c.StartTimeout, "-twilio-idle-timeout": c.IdleTimeout, "-twilio-max-ahead": c.MaxAhead,
		"-twilio-place-timeout": c.PlaceTimeout} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("twilio: %s %v must be positive", name, d))
		}
	}
	if c.ReorderWindow < 0 || c.ReorderWindow > timeline.MaxWindow {
		errs = append(errs, fmt.Errorf("twilio: -twilio-reorder-window %v must be 0-%v", c.ReorderWindow, timeline.MaxWindow))
	}
	if c.UpgradeRate < 0 || c.UpgradeBurst < 1 {
		errs = append(errs, errors.New("twilio: -twilio-upgrade-rate must not be negative and -twilio-upgrade-burst at least 1"))
	}
	if c.DrainTimeout < 0 || c.RetryAfter < time.Second {
		errs = append(errs, errors.New("twilio: the drain timeout must not be negative, -twilio-retry-after at least 1s"))
	}
	return errors.Join(errs...)
}

// minToken is the shortest stream token accepted.
const minToken = 16

// LoadTokens reads TokenFile (when set; internal/tokenfile, one "<tenant> <token>" a line) into
// Tokens.
func (c *Config) LoadTokens() error {
	if c.TokenFile == "" {
		return nil
	}
	f, err := os.Open(c.TokenFile)
	if err != nil {
		return err
	}
	defer f.Close()
	m, err := tokenfile.Tokens(f, minToken)
	if err != nil {
		return fmt.Errorf("twilio: token file: %w", err)
	}
	c.Tokens = m
	return nil
}
