package inproc

import (
	"context"
	"fmt"
	"time"

	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/sip"
	"github.com/rs/zerolog"
)

// startSIP runs callrouter's SIP ingest (internal/sip) on the in-process stack's ingest node, on a
// free loopback port, answering calls for tenant; it returns the SIP address and a stop function.
func startSIP(n *ingest.Node, tenant string, calls, legs int, log zerolog.Logger) (string, func(), error) {
	cfg := sip.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Transports = []string{"udp"}
	// Even ports below the ephemeral range, enough for every stream twice over.
	cfg.RTPPortMin = 10000
	cfg.RTPPortMax = min(10000+max(2000, 4*calls*legs+200), 32000)
	cfg.PortQuarantine = 2 * time.Second
	cfg.DefaultTenant = tenant
	cfg.MaxCalls = calls + calls/10 + 10
	// Every INVITE comes from the tester's one address: the per-source INVITE bound that
	// protects a public trunk port would drop the load itself.
	cfg.InviteRate = 0
	cfg.DrainTimeout = 2 * time.Second
	srv, err := sip.New(cfg, sip.Deps{Log: log})
	if err != nil {
		return "", nil, fmt.Errorf("loadtest: in-process SIP ingest: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, n) }()
	select {
	case <-srv.Ready():
	case err := <-done:
		cancel()
		return "", nil, fmt.Errorf("loadtest: in-process SIP ingest: %w", err)
	case <-time.After(10 * time.Second):
		cancel()
		<-done
		return "", nil, fmt.Errorf("loadtest: in-process SIP ingest did not start in 10s")
	}
	return srv.Addr().String(), func() { cancel(); <-done }, nil
}
