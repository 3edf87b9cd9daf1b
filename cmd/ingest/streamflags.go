package main

import (
	"flag"
	"fmt"
	"time"

	"github.com/callrouter/callrouter/internal/audiohook"
	"github.com/callrouter/callrouter/internal/twilio"
)

// streams are the WebSocket stream sources served on the ingest's public HTTP side: the Genesys
// AudioHook server (on when -audiohook-key-file is set) and the Twilio Media Streams server (on
// when -twilio-token-file is set).
type streams struct {
	ah audiohook.Config
	tw twilio.Config
}

// StreamFlags registers the stream sources' flags. After parsing call Validate; configs hands
// the sources that are on to package sources.
func StreamFlags(fs *flag.FlagSet) *streams {
	s := &streams{ah: audiohook.DefaultConfig(), tw: twilio.DefaultConfig()}
	c := &s.ah
	fs.StringVar(&c.KeyFile, "audiohook-key-file", "", `AudioHook API keys, one "<tenant> <api-key> <base64-client-secret>" a line ("-" as the secret accepts unsigned requests); empty disables AudioHook`)
	fs.StringVar(&c.Path, "audiohook-path", c.Path, "URL path of the AudioHook WebSocket endpoint")
	fs.IntVar(&c.MaxSessions, "audiohook-max-sessions", c.MaxSessions, "AudioHook sessions this node takes at once (past it: 503)")
	fs.IntVar(&c.MaxSessionsPerTenant, "audiohook-max-sessions-per-tenant", c.MaxSessionsPerTenant, "AudioHook sessions per tenant (0: no bound)")
	fs.Float64Var(&c.UpgradeRate, "audiohook-upgrade-rate", c.UpgradeRate, "AudioHook upgrades per second from one client address (0: no bound); past it: 429")
	fs.IntVar(&c.UpgradeBurst, "audiohook-upgrade-burst", c.UpgradeBurst, "AudioHook upgrades one client address may send at once before -audiohook-upgrade-rate applies")
	fs.DurationVar(&c.RetryAfter, "audiohook-retry-after", c.RetryAfter, "Retry-After of a refused AudioHook upgrade")
	fs.DurationVar(&c.SignatureMaxAge, "audiohook-signature-max-age", c.SignatureMaxAge, "oldest signature (created) accepted")
	fs.DurationVar(&c.ClockSkew, "audiohook-clock-skew", c.ClockSkew, "how far in the future a signature's created may be")
	fs.DurationVar(&c.FailDelay, "audiohook-fail-delay", c.FailDelay, "least time a refused signature takes to answer")
	fs.DurationVar(&c.OpenTimeout, "audiohook-open-timeout", c.OpenTimeout, "wait for the client's open after the upgrade")
	fs.DurationVar(&c.IdleTimeout, "audiohook-idle-timeout", c.IdleTimeout, "end a session that sends nothing for this long")
	fs.DurationVar(&c.CloseTimeout, "audiohook-close-timeout", c.CloseTimeout, "wait for the client's close after disconnect, and for its WebSocket close after closed")
	fs.DurationVar(&c.MaxAhead, "audiohook-max-ahead", c.MaxAhead, "how far the audio position may run ahead of the wall clock before the session is disconnected")
	fs.IntVar(&c.MaxBinary, "audiohook-max-binary", c.MaxBinary, "largest binary (audio) message in bytes")
	t := &s.tw
	fs.StringVar(&t.TokenFile, "twilio-token-file", "", `Twilio Media Streams tokens, one "<tenant> <token>" a line (the stream's <Parameter name="token">); empty disables Twilio`)
	fs.StringVar(&t.Path, "twilio-path", t.Path, "URL path of the Twilio Media Streams WebSocket endpoint")
	fs.StringVar(&t.TokenParam, "twilio-token-param", t.TokenParam, "the start.customParameters entry that carries the token")
	fs.IntVar(&t.MaxSessions, "twilio-max-sessions", t.MaxSessions, "Twilio streams this node takes at once (past it: 503)")
	fs.IntVar(&t.MaxSessionsPerTenant, "twilio-max-sessions-per-tenant", t.MaxSessionsPerTenant, "Twilio streams per tenant (0: no bound)")
	fs.Float64Var(&t.UpgradeRate, "twilio-upgrade-rate", t.UpgradeRate, "Twilio upgrades per second from one client address (0: no bound); past it: 429")
	fs.IntVar(&t.UpgradeBurst, "twilio-upgrade-burst", t.UpgradeBurst, "Twilio upgrades one client address may send at once before -twilio-upgrade-rate applies")
	fs.DurationVar(&t.RetryAfter, "twilio-retry-after", t.RetryAfter, "Retry-After of a refused Twilio upgrade")
	fs.DurationVar(&t.StartTimeout, "twilio-start-timeout", t.StartTimeout, "wait for start after the upgrade")
	fs.DurationVar(&t.IdleTimeout, "twilio-idle-timeout", t.IdleTimeout, "end a stream that sends nothing for this long")
	fs.DurationVar(&t.PlaceTimeout, "twilio-place-timeout", t.PlaceTimeout, "bound on placing a stream's call after start (then: close 1013)")
	fs.DurationVar(&t.ReorderWindow, "twilio-reorder-window", t.ReorderWindow, "how long a media chunk waits for earlier ones")
	fs.DurationVar(&t.MaxAhead, "twilio-max-ahead", t.MaxAhead, "how far media timestamps may run ahead of the wall clock before the stream is closed")
	return s
}

// Validate loads the key file and checks the settings of the sources that are on; drain is the
// node's -drain-timeout, which the sessions share.
func (s *streams) Validate(drain time.Duration) error {
	if s.ah.KeyFile != "" {
		if err := s.ah.LoadKeys(); err != nil {
			return fmt.Errorf("flag -audiohook-key-file: %w", err)
		}
		s.ah.DrainTimeout = drain
		if err := s.ah.Validate(); err != nil {
			return err
		}
	}
	if s.tw.TokenFile != "" {
		if err := s.tw.LoadTokens(); err != nil {
			return fmt.Errorf("flag -twilio-token-file: %w", err)
		}
		s.tw.DrainTimeout = drain
		return s.tw.Validate()
	}
	return nil
}

// configs returns the configs of the sources that are on (nil when off).
func (s *streams) configs() (*audiohook.Config, *twilio.Config) {
	var ah *audiohook.Config
	var tw *twilio.Config
	if s.ah.KeyFile != "" {
		ah = &s.ah
	}
	if s.tw.TokenFile != "" {
		tw = &s.tw
	}
	return ah, tw
}
