// Package ctl is callrouterctl, the operator's command-line client: it reads the cluster through
// the routers' admin API (router.api.*), the workers' per-call control subject (ctl.<t>.<c>) and
// the event stream (events.>), starts drains over NATS (worker.<id>.drain), and checks a running
// cluster end to end with a synthetic call. Every command prints a table, or JSON with -json,
// and says how it went in its exit code (see the Exit constants).
package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/cli"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// Exit codes, for scripts.
const (
	ExitOK          = 0 // done; for check, the call passed
	ExitFailed      = 1 // the cluster answered, and the answer is a failure: check failed, unknown call, drain not finished, a refusal
	ExitUsage       = 2 // bad command line
	ExitUnreachable = 3 // NATS or every router could not be reached
)

// errUnreachable marks errors that map to ExitUnreachable.
var errUnreachable = errors.New("ctl: unreachable")

// env is what every command gets: its connection, output streams and the shared flags.
type env struct {
	nc      *nats.Conn
	out     io.Writer
	errOut  io.Writer
	json    bool
	timeout time.Duration
	args    []string
	ctx     context.Context
}

type command struct {
	name, args, help string
	flags            func(fs *flag.FlagSet) // the command's own flags
	run              func(e *env) int
}

var commands []command

func init() {
	commands = []command{
		{"calls", "", "list the calls the routers know: tenant, call, epoch, ingest, placements, progress", callsFlags, runCalls},
		{"call", "<tenant>/<call>", "one call: placements, epochs and history, per-leg progress, accounting so far", nil, runCall},
		{"workers", "", "the workers: capacity, active, lag, ready, draining, eligible", nil, runWorkers},
		{"ingests", "", "the ingest nodes: active calls, ready, draining", nil, runIngests},
		{"drain", "<worker>", "drain a worker over NATS (its calls migrate, make-before-break) and wait until it holds none", drainFlags, runDrain},
		{"tail", "[tenant[/call]]", "print events as they happen, one line each", tailFlags, runTail},
		{"top", "", "a live view refreshed every -interval: workers, ingests, calls and frames/s by tenant, gaps and refusals per minute", topFlags, runTop},
		{"check", "", "place a short synthetic call end to end and read its accounting; exit 0 only if every frame was processed", checkFlags, runCheck},
	}
}

// Main runs callrouterctl with args (without the program name) and returns the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return ExitUsage
		}
		return ExitOK
	}
	var cmd *command
	for i := range commands {
		if commands[i].name == args[0] {
			cmd = &commands[i]
		}
	}
	if cmd == nil {
		fmt.Fprintf(stderr, "callrouterctl: unknown command %q\n", args[0])
		usage(stderr)
		return ExitUsage
	}
	fs := flag.NewFlagSet("callrouterctl "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	natsCfg := cli.NATSFlags(fs)
	e := &env{out: stdout, errOut: stderr}
	fs.BoolVar(&e.json, "json", false, "print JSON instead of a table")
	fs.DurationVar(&e.timeout, "timeout", 3*time.Second, "how long to wait for an answer from NATS")
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: callrouterctl %s [flags] %s\n  %s\n\nflags (each also CALLROUTER_<FLAG>):\n", cmd.name, cmd.args, cmd.help)
		fs.PrintDefaults()
	}
	pos, err := cli.ParseArgs(fs, args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "callrouterctl %s: %v\n", cmd.name, err)
		return ExitUsage
	}
	if e.timeout <= 0 {
		fmt.Fprintf(stderr, "callrouterctl %s: flag -timeout must be positive\n", cmd.name)
		return ExitUsage
	}
	if err := validate(cmd.name, pos); err != nil {
		fmt.Fprintf(stderr, "callrouterctl %s: %v\n", cmd.name, err)
		return ExitUsage
	}
	e.args = pos
	natsCfg.Name = "callrouterctl " + cmd.name
	nc, err := bus.Connect(*natsCfg, zerolog.Nop())
	if err != nil {
		fmt.Fprintf(stderr, "callrouterctl: cannot connect to NATS at %s: %v\n", natsCfg.URL, err)
		return ExitUnreachable
	}
	defer nc.Close()
	e.nc = nc
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	e.ctx = ctx
	return cmd.run(e)
}

// validate checks a command's arguments before anything connects.
func validate(name string, pos []string) error {
	want := map[string][2]int{"calls": {0, 0}, "call": {1, 1}, "workers": {0, 0}, "ingests": {0, 0}, "drain": {1, 1}, "tail": {0, 1}, "top": {0, 0}, "check": {0, 0}}[name]
	if len(pos) < want[0] || len(pos) > want[1] {
		return fmt.Errorf("takes %d to %d arguments, got %d (%q)", want[0], want[1], len(pos), pos)
	}
	switch name {
	case "call":
		if _, _, err := splitCall(pos[0], true); err != nil {
			return err
		}
	case "tail":
		if len(pos) == 1 {
			if _, _, err := splitCall(pos[0], false); err != nil {
				return err
			}
		}
	case "drain":
		if err := subjects.Check("worker id", pos[0]); err != nil {
			return err
		}
	}
	return validateOpts(name)
}

// validateOpts checks a command's own flags; each error names its flag.
func validateOpts(name string) error {
	switch name {
	case "tail":
		for _, k := range tailOpts.kinds {
			if err := subjects.Check("event kind (flag -kind)", k); err != nil {
				return err
			}
		}
		if c := tailOpts.color; c != "auto" && c != "always" && c != "never" {
			return fmt.Errorf("flag -color: want auto, always or never, got %q", c)
		}
		if tailOpts.count < 0 || tailOpts.dur < 0 {
			return errors.New("flags -n and -for must not be negative")
		}
	case "top":
		if topOpts.interval < 100*time.Millisecond {
			return errors.New("flag -interval must be at least 100ms")
		}
		if c := topOpts.clear; c != "auto" && c != "always" && c != "never" {
			return fmt.Errorf("flag -clear: want auto, always or never, got %q", c)
		}
		if topOpts.count < 0 {
			return errors.New("flag -n must not be negative")
		}
	case "drain":
		if drainOpts.wait < 0 {
			return errors.New("flag -wait must not be negative")
		}
	case "check":
		if checkOpts.frames < 1 || checkOpts.frames > 30_000 {
			return errors.New("flag -frames must be 1–30000")
		}
		if err := subjects.Check("tenant (flag -tenant)", checkOpts.tenant); err != nil {
			return err
		}
		if checkOpts.ingest != "" {
			if err := subjects.Check("ingest id (flag -ingest-id)", checkOpts.ingest); err != nil {
				return err
			}
		}
		if len(checkOpts.pools) == 0 {
			return errors.New("flag -pools: at least one pool")
		}
		for _, p := range checkOpts.pools {
			if err := subjects.Check("pool (flag -pools)", p); err != nil {
				return err
			}
		}
		if checkOpts.wait <= 0 {
			return errors.New("flag -wait must be positive")
		}
	}
	return nil
}

// splitCall splits "tenant/call" (the call may hold '/'); with needCall the call part is required.
func splitCall(s string, needCall bool) (tenant, call string, err error) {
	tenant, call, _ = strings.Cut(s, "/")
	if tenant == "" || (needCall && call == "") {
		return "", "", fmt.Errorf("want <tenant>/<call>, got %q", s)
	}
	return tenant, call, nil
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: callrouterctl <command> [flags] [args]\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %-18s %s\n", c.name, c.args, c.help)
	}
	fmt.Fprintf(w, "\nflags of every command: -nats, -nats-creds, -nats-tls-cert, -nats-tls-key, -nats-tls-ca, -json, -timeout\n"+
		"(each also CALLROUTER_<FLAG>, e.g. CALLROUTER_NATS). Exit codes: %d ok, %d failed, %d usage, %d unreachable.\n",
		ExitOK, ExitFailed, ExitUsage, ExitUnreachable)
}

// api asks router.api.<verb> and decodes the reply into resp; no answer is errUnreachable.
func (e *env) api(verb string, req, resp any) error {
	if req == nil {
		req = struct {
			V int `json:"v"`
		}{wire.V}
	}
	ctx, cancel := context.WithTimeout(e.ctx, e.timeout)
	defer cancel()
	if err := bus.Request(ctx, e.nc, subjects.API(verb), req, resp); err != nil {
		return fmt.Errorf("%w: no router answered router.api.%s: %v", errUnreachable, verb, err)
	}
	return nil
}

// fail prints err and returns its exit code.
func (e *env) fail(err error) int {
	fmt.Fprintf(e.errOut, "callrouterctl: %v\n", err)
	if errors.Is(err, errUnreachable) {
		return ExitUnreachable
	}
	return ExitFailed
}

// emitJSON prints v as indented JSON.
func (e *env) emitJSON(v any) int {
	enc := json.NewEncoder(e.out)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return e.fail(err)
	}
	return ExitOK
}

// gather publishes req on subject and collects every reply until quiet passes without one or
// the timeout ends: a subject several members answer (ctl.<t>.<c>, one per pool).
func (e *env) gather(subject string, req any, quiet time.Duration) ([]*nats.Msg, error) {
	data, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	inbox := e.nc.NewRespInbox()
	sub, err := e.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := e.nc.PublishRequest(subject, inbox, data); err != nil {
		return nil, err
	}
	var out []*nats.Msg
	deadline := time.Now().Add(e.timeout)
	wait := e.timeout
	for {
		if left := time.Until(deadline); left < wait {
			wait = left
		}
		if wait <= 0 {
			return out, nil
		}
		m, err := sub.NextMsg(wait)
		if err != nil {
			return out, nil
		}
		if len(m.Data) == 0 && m.Header.Get("Status") == "503" { // no responders
			return out, nil
		}
		out = append(out, m)
		wait = quiet
	}
}

// fmtProgress renders per-leg progress as "0:355 1:355".
func fmtProgress(p []session.LegSeq) string {
	sort.Slice(p, func(i, j int) bool { return p[i].Leg < p[j].Leg })
	var b strings.Builder
	for i, l := range p {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%d:%d", l.Leg, l.Next)
	}
	if b.Len() == 0 {
		return "-"
	}
	return b.String()
}
