// Command worker runs one callrouter worker: it takes calls placed on it, processes their frames
// in order and publishes events. Every flag has an environment variable CALLROUTER_<FLAG>.
package main

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/cli"
	"github.com/callrouter/callrouter/internal/obs"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	common := cli.CommonFlags(fs, ":8082")
	cfg, opts := Flags(fs)
	if err := cli.Parse(fs, args); err != nil {
		fmt.Fprintf(os.Stderr, "worker: %v\n", err)
		return 2
	}
	cfg.ProcessorOptions = map[string]proc.Options{}
	for _, kv := range *opts {
		if name, _, _ := strings.Cut(kv, "."); !slices.Contains(cfg.Processors, name) {
			fmt.Fprintf(os.Stderr, "worker: flag -proc-opt: %q is for processor %q, which is not in -processors %v\n", kv, name, cfg.Processors)
			return 2
		}
		k, v, ok := strings.Cut(kv, "=")
		name, key, ok2 := strings.Cut(k, ".")
		if !ok || !ok2 {
			fmt.Fprintf(os.Stderr, "worker: flag -proc-opt: %q is not processor.key=value\n", kv)
			return 2
		}
		if cfg.ProcessorOptions[name] == nil {
			cfg.ProcessorOptions[name] = proc.Options{}
		}
		cfg.ProcessorOptions[name][key] = v
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "worker: %v\n", err)
		return 2
	}
	return cli.Main("worker", cfg.ID, cfg.HeartbeatInterval, common, func(nc bus.Conn, log zerolog.Logger, reg *prometheus.Registry, h *obs.Health) (cli.Service, error) {
		return worker.New(*cfg, worker.Deps{NC: nc, Log: log, Registry: reg, Health: h})
	})
}

// Flags registers the worker's flags and returns the config they fill and the raw -proc-opt list.
func Flags(fs *flag.FlagSet) (*worker.Config, *cli.Append) {
	cfg := worker.DefaultConfig()
	cfg.ID = cli.Hostname()
	fs.StringVar(&cfg.ID, "id", cfg.ID, "worker id (unique; a subject token)")
	fs.StringVar(&cfg.Pool, "pool", cfg.Pool, "pool this worker serves")
	fs.Func("tenants", "comma-separated tenants this worker is dedicated to (its pool's NATS identity reads only their audio); empty: every tenant", func(v string) error {
		cfg.Tenants = nil
		for _, t := range strings.Split(v, ",") {
			if t = strings.TrimSpace(t); t != "" {
				cfg.Tenants = append(cfg.Tenants, t)
			}
		}
		return nil
	})
	fs.Func("mode", "pool mode: session, the only one (each call on one worker, in order)", func(v string) error {
		if v != worker.ModeSession {
			return fmt.Errorf("%q: the only mode is %q (frame mode, which counted frames and ran no processor, was removed)", v, worker.ModeSession)
		}
		return nil
	})
	fs.IntVar(&cfg.Capacity, "capacity", cfg.Capacity, "calls held at once")
	fs.IntVar(&cfg.QueueFrames, "queue-frames", cfg.QueueFrames, "frames a two-leg call may have waiting, beyond which the oldest is dropped (at most -pending-msgs; scaled by legs/2 for calls with more legs)")
	fs.IntVar(&cfg.PendingMsgs, "pending-msgs", cfg.PendingMsgs, "capacity of a two-leg call's NATS subscription channel, beyond which messages are dropped as a slow consumer (scaled by legs/2 for calls with more legs)")
	fs.DurationVar(&cfg.MaxFrameAge, "max-frame-age", cfg.MaxFrameAge, "live frames older than this are dropped as stale")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", cfg.IdleTimeout, "a call with no frames for this long is reaped")
	fs.DurationVar(&cfg.HeartbeatInterval, "heartbeat", cfg.HeartbeatInterval, "heartbeat interval")
	fs.DurationVar(&cfg.FenceAfter, "fence-after", cfg.FenceAfter, "drop every call silently if the heartbeat loop stalled this long (match the routers' misses × heartbeat)")
	fs.DurationVar(&cfg.LagThreshold, "lag-threshold", cfg.LagThreshold, "processing lag above which the worker sheds calls")
	fs.DurationVar(&cfg.ShedAfter, "shed-after", cfg.ShedAfter, "how long lag must stay above the threshold before shedding")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", cfg.DrainTimeout, "how long SIGTERM waits for calls to migrate away")
	fs.DurationVar(&cfg.ReplayTimeout, "replay-timeout", cfg.ReplayTimeout, "how long to wait for ingest to replay missed frames")
	fs.Var((*cli.List)(&cfg.Processors), "processors", "processors to run, comma-separated, in order (known: "+strings.Join(proc.Names(), ", ")+")")
	opts := &cli.Append{}
	fs.Var(opts, "proc-opt", "processor options, comma-separated processor.key=value (e.g. record.dir=/var/lib/callrouter)")
	return &cfg, opts
}
