// Command router runs one callrouter router replica (the lifecycle manager): placement, death
// detection, orphan reaping, lifecycle events and the admin API. Run two or more; they share the
// "router" queue group. Every flag has an environment variable CALLROUTER_<FLAG>.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/cli"
	"github.com/callrouter/callrouter/internal/obs"
	"github.com/callrouter/callrouter/internal/router"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	fs := flag.NewFlagSet("router", flag.ContinueOnError)
	common := cli.CommonFlags(fs, ":8081")
	cfg := Flags(fs)
	if err := cli.Parse(fs, args); err != nil {
		fmt.Fprintf(os.Stderr, "router: %v\n", err)
		return 2
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "router: %v\n", err)
		return 2
	}
	return cli.Main("router", cfg.ID, cfg.HeartbeatInterval, common, func(nc bus.Conn, log zerolog.Logger, reg *prometheus.Registry, h *obs.Health) (cli.Service, error) {
		return router.New(*cfg, router.Deps{NC: nc, Log: log, Registry: reg, Health: h})
	})
}

// Flags registers the router's flags and returns the config they fill.
func Flags(fs *flag.FlagSet) *router.Config {
	cfg := router.DefaultConfig()
	cfg.ID = cli.Hostname()
	fs.StringVar(&cfg.ID, "id", cfg.ID, "router id (unique; a subject token)")
	fs.DurationVar(&cfg.HeartbeatInterval, "heartbeat", cfg.HeartbeatInterval, "the router's own heartbeat interval")
	fs.IntVar(&cfg.Misses, "misses", cfg.Misses, "heartbeats a component may miss before it is declared down")
	fs.DurationVar(&cfg.OfferTimeout, "offer-timeout", cfg.OfferTimeout, "how long a worker has to answer an offer")
	fs.DurationVar(&cfg.MoveOfferTimeout, "move-offer-timeout", cfg.MoveOfferTimeout, "how long a worker has to answer an offer that moves a call make-before-break (drain, rebalance), if longer than -offer-timeout")
	fs.IntVar(&cfg.OfferAttempts, "offer-attempts", cfg.OfferAttempts, "workers tried per pool before refusing")
	fs.DurationVar(&cfg.OrphanGrace, "orphan-grace", cfg.OrphanGrace, "how long a worker may hold a call no ingest owns")
	fs.DurationVar(&cfg.ReconcileGrace, "reconcile-grace", cfg.ReconcileGrace, "how long an ingest may list a call on a worker that does not hold it before the ingest is told to re-place it")
	fs.DurationVar(&cfg.RetryAfter, "retry-after", cfg.RetryAfter, "retry delay suggested in refusals")
	fs.IntVar(&cfg.MaxInflight, "max-inflight", cfg.MaxInflight, "placements handled at once")
	return &cfg
}
