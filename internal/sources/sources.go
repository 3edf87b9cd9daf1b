// Package sources assembles an ingest node's media sources from their configs (WHIP and the call
// page, the WebSocket streams, SIP) and runs them on the node: the one wiring that cmd/ingest and
// the one-process cmd/callrouter share.
package sources

import (
	"context"
	"net/http"
	"sync"

	"github.com/callrouter/callrouter/internal/audiohook"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/sip"
	"github.com/callrouter/callrouter/internal/twilio"
	"github.com/callrouter/callrouter/internal/whip"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Config says which sources are on and how. The mains validate each part (with its flag names)
// before New.
type Config struct {
	WHIP      *whip.Config      // the WHIP endpoint and the call page; nil: off
	Listen    whip.ListenConfig // the public listener of WHIP and the streams (never /metrics)
	SIP       *sip.Config       // the SIP user agent; nil: off
	AudioHook *audiohook.Config // the Genesys AudioHook endpoint; nil: off
	Twilio    *twilio.Config    // the Twilio Media Streams endpoint; nil: off
}

// Deps are the sources' collaborators.
type Deps struct {
	Log      zerolog.Logger
	Registry prometheus.Registerer
}

// Set is the sources that are on, built and not yet running.
type Set struct {
	listen whip.ListenConfig
	log    zerolog.Logger
	whip   *whip.Server
	sip    *sip.Server
	ah     *audiohook.Server
	tw     *twilio.Server
}

// New builds the servers of the sources that are on; it does no I/O.
func New(cfg Config, d Deps) (*Set, error) {
	s := &Set{listen: cfg.Listen, log: d.Log}
	var err error
	if cfg.WHIP != nil {
		if s.whip, err = whip.New(*cfg.WHIP, whip.Deps{Log: d.Log, Registry: d.Registry}); err != nil {
			return nil, err
		}
	}
	if cfg.SIP != nil {
		if s.sip, err = sip.New(*cfg.SIP, sip.Deps{Log: d.Log, Registry: d.Registry}); err != nil {
			return nil, err
		}
	}
	if cfg.AudioHook != nil {
		if s.ah, err = audiohook.New(*cfg.AudioHook, audiohook.Deps{Log: d.Log, Registry: d.Registry}); err != nil {
			return nil, err
		}
	}
	if cfg.Twilio != nil {
		if s.tw, err = twilio.New(*cfg.Twilio, twilio.Deps{Log: d.Log, Registry: d.Registry}); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Running is a started Set.
type Running struct {
	url string
	wg  sync.WaitGroup
}

// PublicURL is the public listener's base URL, or "" when no source needs one.
func (r *Running) PublicURL() string { return r.url }

// Wait returns once every source has stopped: after ctx ended and the sessions drained, the
// public listener last (a WHIP page keeps its session URL until its call has ended).
func (r *Running) Wait() { r.wg.Wait() }

// Start binds the public listener when a source serves on it, then runs every source on n until
// ctx ends. An error binding the listener stops nothing, as nothing has started.
func (s *Set) Start(ctx context.Context, n *ingest.Node) (*Running, error) {
	r := &Running{}
	if s.whip != nil || s.ah != nil || s.tw != nil {
		mux := http.NewServeMux()
		if s.whip != nil {
			mux.Handle("/", s.whip.PublicHandler())
		}
		if s.ah != nil {
			s.ah.Mount(mux)
		}
		if s.tw != nil {
			s.tw.Mount(mux)
		}
		pub, err := whip.ListenPublic(s.listen, mux, s.log)
		if err != nil {
			return nil, err
		}
		r.url = pub.URL()
		// The listener outlives ctx until the WHIP endpoint has drained. WebSocket sessions are
		// hijacked connections: closing the listener ends none of them.
		pubCtx, pubStop := context.WithCancel(context.Background())
		r.wg.Add(2)
		go func() {
			defer r.wg.Done()
			if err := pub.Run(pubCtx); err != nil {
				s.log.Error().Err(err).Msg("public listener stopped")
			}
		}()
		go func() {
			defer r.wg.Done()
			defer pubStop()
			if s.whip == nil {
				<-ctx.Done()
				return
			}
			if err := s.whip.Run(ctx, n); err != nil {
				s.log.Error().Err(err).Msg("WHIP endpoint stopped")
			}
		}()
	}
	for name, src := range map[string]ingest.Source{"SIP user agent": source(s.sip), "AudioHook endpoint": source(s.ah), "Twilio Media Streams endpoint": source(s.tw)} {
		if src == nil {
			continue
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			if err := src.Run(ctx, n); err != nil {
				s.log.Error().Err(err).Msgf("%s stopped", name)
			}
		}()
	}
	return r, nil
}

// source returns p as an ingest.Source, nil when p is (a nil pointer in an interface is not nil).
func source[P interface {
	*T
	ingest.Source
}, T any](p P) ingest.Source {
	if p == nil {
		return nil
	}
	return p
}
