package inproc

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/callrouter/callrouter/internal/audiohook"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/twilio"
	"github.com/callrouter/callrouter/loadtest"
	"github.com/rs/zerolog"
)

// streamSource is what the AudioHook and Twilio servers have in common for the harness.
type streamSource interface {
	ingest.Source
	Mount(mux *http.ServeMux)
	Ready() <-chan struct{}
}

// startAudioHook runs callrouter's AudioHook server (internal/audiohook) on the in-process
// stack's ingest node, on a loopback HTTP port, with one API key of tenant signed by a random
// client secret made for the run; it fills l's AudioHook fields and returns a stop function.
func startAudioHook(n *ingest.Node, l *loadtest.Local, tenant string, calls int, log zerolog.Logger) (func(), error) {
	cfg := audiohook.DefaultConfig()
	key, secret := randomHex(16), make([]byte, 32)
	_, _ = rand.Read(secret)
	cfg.Keys = map[string]audiohook.Key{key: {Tenant: tenant, Secret: secret}}
	cfg.MaxSessions = calls + calls/10 + 10
	// Every call comes from the tester's one address and tenant: the bounds that protect a public
	// endpoint would refuse the load itself.
	cfg.MaxSessionsPerTenant = 0
	cfg.UpgradeRate = 0
	cfg.DrainTimeout = time.Second
	srv, err := audiohook.New(cfg, audiohook.Deps{Log: log})
	if err != nil {
		return nil, fmt.Errorf("loadtest: in-process AudioHook server: %w", err)
	}
	addr, stop, err := serveStream(n, srv, "AudioHook")
	if err != nil {
		return nil, err
	}
	l.AudioHook, l.AudioHookKey, l.AudioHookSecret = "ws://"+addr+cfg.Path, key, base64.StdEncoding.EncodeToString(secret)
	return stop, nil
}

// startTwilio runs callrouter's Media Streams server (internal/twilio) on the in-process stack's
// ingest node, on a loopback HTTP port, with one random token of tenant; it fills l's Twilio
// fields and returns a stop function.
func startTwilio(n *ingest.Node, l *loadtest.Local, tenant string, calls int, log zerolog.Logger) (func(), error) {
	cfg := twilio.DefaultConfig()
	token := randomHex(24)
	cfg.Tokens = map[string]string{token: tenant}
	cfg.MaxSessions = calls + calls/10 + 10
	cfg.MaxSessionsPerTenant = 0
	cfg.UpgradeRate = 0
	cfg.DrainTimeout = time.Second
	srv, err := twilio.New(cfg, twilio.Deps{Log: log})
	if err != nil {
		return nil, fmt.Errorf("loadtest: in-process Twilio server: %w", err)
	}
	addr, stop, err := serveStream(n, srv, "Twilio")
	if err != nil {
		return nil, err
	}
	l.Twilio, l.TwilioToken = "ws://"+addr+cfg.Path, token
	return stop, nil
}

// serveStream serves src on a loopback HTTP port and runs it on n until stop.
func serveStream(n *ingest.Node, src streamSource, name string) (string, func(), error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	mux := http.NewServeMux()
	src.Mount(mux)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(lis) }()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, n) }()
	select {
	case <-src.Ready():
	case err := <-done:
		cancel()
		_ = hs.Close()
		return "", nil, fmt.Errorf("loadtest: in-process %s server: %w", name, err)
	}
	stop := func() {
		cancel()
		<-done
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = hs.Shutdown(sctx)
	}
	return lis.Addr().String(), stop, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
