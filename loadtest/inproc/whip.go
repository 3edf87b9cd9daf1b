package inproc

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/whip"
	"github.com/rs/zerolog"
)

// startWHIP runs callrouter's WHIP ingest (internal/whip) on the in-process stack's ingest node,
// on loopback HTTP and UDP ports, letting unauthenticated requests in as tenant, with the read
// coalescing given (nil: the endpoint's default); it returns the endpoint URL and a stop function.
func startWHIP(n *ingest.Node, tenant string, calls int, coalesce *time.Duration, log zerolog.Logger) (string, func(), error) {
	cfg := whip.DefaultConfig()
	if coalesce != nil {
		cfg.ReadCoalesce = *coalesce
	}
	cfg.UDPAddr = "127.0.0.1:0"
	cfg.OpenTenant = tenant
	cfg.Codecs = []string{"pcmu", "pcma"}
	cfg.MaxSessions = calls + calls/10 + 10
	// Every call comes from the tester's one address and tenant: the per-source and per-tenant
	// bounds that protect a public endpoint would refuse the load itself.
	cfg.PostRate = 0
	cfg.MaxSessionsPerTenant = 0
	cfg.Linger = time.Second
	srv, err := whip.New(cfg, whip.Deps{Log: log})
	if err != nil {
		return "", nil, fmt.Errorf("loadtest: in-process WHIP ingest: %w", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	mux := http.NewServeMux()
	srv.Mount(mux)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(lis) }()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, n) }()
	stop := func() {
		cancel()
		<-done
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = hs.Shutdown(sctx)
	}
	select {
	case <-srv.Ready():
	case err := <-done:
		cancel()
		_ = hs.Close()
		return "", nil, fmt.Errorf("loadtest: in-process WHIP ingest: %w", err)
	}
	return "http://" + lis.Addr().String() + cfg.Path, stop, nil
}
