package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/callrouter/callrouter/internal/audiohook"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// streams are the WebSocket stream sources served on the ingest's public HTTP side: the Genesys
// AudioHook server (on when -audiohook-key-file is set).
type streams struct {
	ah    audiohook.Config
	ahSrv *audiohook.Server
}

// StreamFlags registers the stream sources' flags. After parsing call Validate, then Build in the
// service constructor, Mount on the public mux and Start with the node.
func StreamFlags(fs *flag.FlagSet) *streams {
	s := &streams{ah: audiohook.DefaultConfig()}
	c := &s.ah
	fs.StringVar(&c.KeyFile, "audiohook-key-file", "", `AudioHook API keys, one "<tenant> <api-key> <base64-client-secret>" a line ("-" as the secret accepts unsigned requests); empty disables AudioHook`)
	fs.StringVar(&c.Path, "audiohook-path", c.Path, "URL path of the AudioHook WebSocket endpoint")
	fs.IntVar(&c.MaxSessions, "audiohook-max-sessions", c.MaxSessions, "AudioHook sessions this node takes at once (past it: 503)")
	fs.IntVar(&c.MaxSessionsPerTenant, "audiohook-max-sessions-per-tenant", c.MaxSessionsPerTenant, "AudioHook sessions per tenant (0: no bound)")
	fs.DurationVar(&c.RetryAfter, "audiohook-retry-after", c.RetryAfter, "Retry-After of a refused AudioHook upgrade")
	fs.DurationVar(&c.SignatureMaxAge, "audiohook-signature-max-age", c.SignatureMaxAge, "oldest signature (created) accepted")
	fs.DurationVar(&c.ClockSkew, "audiohook-clock-skew", c.ClockSkew, "how far in the future a signature's created may be")
	fs.DurationVar(&c.FailDelay, "audiohook-fail-delay", c.FailDelay, "least time a refused signature takes to answer")
	fs.DurationVar(&c.OpenTimeout, "audiohook-open-timeout", c.OpenTimeout, "wait for the client's open after the upgrade")
	fs.DurationVar(&c.IdleTimeout, "audiohook-idle-timeout", c.IdleTimeout, "end a session that sends nothing for this long")
	fs.DurationVar(&c.CloseTimeout, "audiohook-close-timeout", c.CloseTimeout, "wait for the client's close after disconnect, and for its WebSocket close after closed")
	fs.DurationVar(&c.MaxAhead, "audiohook-max-ahead", c.MaxAhead, "how far the audio position may run ahead of the wall clock before the session is disconnected")
	fs.IntVar(&c.MaxBinary, "audiohook-max-binary", c.MaxBinary, "largest binary (audio) message in bytes")
	return s
}

// Validate loads the key file and checks the settings of the sources that are on; drain is the
// node's -drain-timeout, which the sessions share.
func (s *streams) Validate(drain time.Duration) error {
	if s.ah.KeyFile == "" {
		return nil
	}
	if err := s.ah.LoadKeys(); err != nil {
		return fmt.Errorf("flag -audiohook-key-file: %w", err)
	}
	s.ah.DrainTimeout = drain
	return s.ah.Validate()
}

// Build makes the servers of the sources that are on.
func (s *streams) Build(log zerolog.Logger, reg prometheus.Registerer) error {
	if s.ah.KeyFile == "" {
		return nil
	}
	var err error
	s.ahSrv, err = audiohook.New(s.ah, audiohook.Deps{Log: log, Registry: reg})
	return err
}

// Mount serves the sources' endpoints on mux (the public HTTP side).
func (s *streams) Mount(mux *http.ServeMux) {
	if s.ahSrv != nil {
		s.ahSrv.Mount(mux)
	}
}

// Start runs the sources with n on goroutines that wg tracks; they drain when ctx ends.
func (s *streams) Start(ctx context.Context, n *ingest.Node, wg *sync.WaitGroup, log zerolog.Logger) {
	if s.ahSrv == nil {
		return
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.ahSrv.Run(ctx, n); err != nil {
			log.Error().Err(err).Msg("AudioHook endpoint stopped")
		}
	}()
}
