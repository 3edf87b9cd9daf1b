// Package inproc is the load tester's in-process harness: it runs callrouter's own services in
// the tester's process for package loadtest — a one-process callrouter (embedded nats-server,
// router, workers running the "loadtest" probe, and the SIP, WHIP, AudioHook or Twilio ingest a
// mode needs), or an ingest node of the tester's own on a remote NATS (mode inproc). It is the
// white-box half of the tester; package loadtest, the black-box client, never imports a service.
package inproc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/natsauth"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/callrouter/callrouter/loadtest"
	"github.com/callrouter/callrouter/loadtest/probe"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// Start runs what cfg asks for; it is a loadtest.Harness.
func Start(ctx context.Context, cfg loadtest.LocalConfig) (*loadtest.Local, error) {
	return StartWith(bus.Config{})(ctx, cfg)
}

var _ loadtest.Harness = Start

// StartWith is Start whose ingest node on a remote NATS signs in with remote's credentials and
// TLS (CredsFile, NkeyFile, TLSCert, TLSKey, TLSCA; the rest of remote is not used).
func StartWith(remote bus.Config) loadtest.Harness {
	return func(ctx context.Context, cfg loadtest.LocalConfig) (*loadtest.Local, error) {
		if cfg.NATSURL != "" {
			return joinRemote(cfg, remote)
		}
		return startStack(ctx, cfg)
	}
}

// startStack starts the one-process callrouter and, for the SIP, WHIP, AudioHook and Twilio
// modes, that ingest.
func startStack(ctx context.Context, cfg loadtest.LocalConfig) (*loadtest.Local, error) {
	wc := worker.DefaultConfig()
	wc.Processors = []string{"accounting", probe.ProcessorName}
	wc.Capacity = cfg.WorkerCapacity
	if wc.Capacity == 0 {
		wc.Capacity = (cfg.Calls+cfg.Workers-1)/cfg.Workers + cfg.Calls/10 + 10
	}
	sc := stack.Config{Workers: cfg.Workers, Worker: wc, Log: cfg.StackLog, Ingest: ingest.DefaultConfig()}
	sc.Ingest.PublishConns = cfg.PublishConns
	if cfg.Mode == loadtest.ModeInproc && cfg.Ingests > 1 {
		sc.Ingest.PublishConns = 1 // -ingests nodes of one connection each
	}
	publishers := ingest.ConnsInUse(sc.Ingest.PublishConns, cfg.Calls)
	var opts []nats.Option
	cleanup := func() {}
	if cfg.Secure {
		var err error
		if opts, cleanup, err = secure(&sc, wc.Pool, cfg.Tenant); err != nil {
			return nil, err
		}
	}
	st, err := stack.Start(sc)
	if err != nil {
		cleanup()
		return nil, fmt.Errorf("loadtest: in-process stack: %w", err)
	}
	closeStack := func() { _ = st.Close(); cleanup() }
	if err := waitWorkers(ctx, st, cfg.Workers); err != nil {
		closeStack()
		return nil, err
	}
	it := &ingestTarget{nodes: []*ingest.Node{st.Ingest}}
	if cfg.Mode == loadtest.ModeInproc && cfg.Ingests > 1 {
		stopNodes, err := addIngests(st, it, cfg.Ingests-1, cfg.StackLog)
		if err != nil {
			closeStack()
			return nil, err
		}
		stackOnly := closeStack
		closeStack = func() { stopNodes(); stackOnly() }
	}
	l := &loadtest.Local{URL: st.URL, Stack: true, Ingest: it, Publishers: publishers, Attach: probe.Attach, Options: opts, Close: closeStack}
	var stop func()
	switch cfg.Mode {
	case loadtest.ModeSIP:
		l.SIP, stop, err = startSIP(st.Ingest, cfg.Tenant, cfg.Calls, cfg.Legs, cfg.StackLog)
	case loadtest.ModeWHIP:
		l.WHIP, stop, err = startWHIP(st.Ingest, cfg.Tenant, cfg.Calls, cfg.WHIPReadCoalesce, cfg.StackLog)
	case loadtest.ModeAudioHook:
		stop, err = startAudioHook(st.Ingest, l, cfg.Tenant, cfg.Calls, cfg.StackLog)
	case loadtest.ModeTwilio:
		stop, err = startTwilio(st.Ingest, l, cfg.Tenant, cfg.Calls, cfg.StackLog)
	}
	if err != nil {
		closeStack()
		return nil, err
	}
	if stop != nil {
		l.Close = func() { stop(); closeStack() }
	}
	return l, nil
}

// waitWorkers waits until the router sees every worker and the stack's ingest node is ready:
// its Run has opened the connections its frames go on, so that no call starts on its own
// connection and keeps it (ingest.ConnsInUse counts from there).
func waitWorkers(ctx context.Context, st *stack.Stack, n int) error {
	deadline := time.Now().Add(15 * time.Second)
	for len(st.Routers[0].Workers()) < n || st.Health.ReadyErr() != nil {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("loadtest: in-process workers (%d of %d visible to the router) or ingest (%v) not ready in 15s",
				len(st.Routers[0].Workers()), n, st.Health.ReadyErr())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// joinRemote runs an ingest node of the tester's own on a remote callrouter's NATS: the calls
// load the remote routers and workers, never a remote ingest.
func joinRemote(cfg loadtest.LocalConfig, remote bus.Config) (*loadtest.Local, error) {
	bc := bus.DefaultConfig()
	bc.CredsFile, bc.NkeyFile, bc.TLSCert, bc.TLSKey, bc.TLSCA = remote.CredsFile, remote.NkeyFile, remote.TLSCert, remote.TLSKey, remote.TLSCA
	bc.URL, bc.Name = cfg.NATSURL, "loadtest ingest "+cfg.RunID
	nc, err := bus.Connect(bc, cfg.Log)
	if err != nil {
		return nil, fmt.Errorf("loadtest: %w", err)
	}
	ic := ingest.DefaultConfig()
	ic.ID = "loadtest-" + cfg.RunID
	ic.DrainTimeout = time.Second
	n, err := ingest.New(ic, ingest.Deps{NC: nc, Log: cfg.Log})
	if err != nil {
		nc.Close()
		return nil, err
	}
	nctx, cancel := context.WithCancel(context.Background())
	done, err := n.Start(nctx) // no call starts before the node serves
	if err != nil {
		cancel()
		nc.Close()
		return nil, fmt.Errorf("loadtest: ingest node: %w", err)
	}
	return &loadtest.Local{URL: cfg.NATSURL, Ingest: &ingestTarget{nodes: []*ingest.Node{n}}, Close: func() {
		cancel()
		<-done
		n.Close()
		nc.Close()
	}}, nil
}

// addIngests starts n more ingest nodes on the stack, each with its own NATS connection, for t to
// place calls through (-ingests: nats-server caches subject matches per publishing connection,
// up to 512 subjects, so one ingest node publishing both legs of thousands of calls misses that
// cache on nearly every frame). The returned func stops them.
func addIngests(st *stack.Stack, t *ingestTarget, n int, log zerolog.Logger) (stop func(), err error) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	stop = func() { cancel(); wg.Wait() }
	for i := range n {
		id := fmt.Sprintf("ingest-%d", i+2)
		nc, err := st.Connect(natsauth.RoleIngest, "", id)
		if err != nil {
			stop()
			return nil, fmt.Errorf("loadtest: in-process %s: %w", id, err)
		}
		ic := ingest.DefaultConfig()
		ic.ID = id
		node, err := ingest.New(ic, ingest.Deps{NC: nc, Log: log})
		if err != nil {
			stop()
			return nil, err
		}
		done, err := node.Start(ctx) // no call starts before the node serves
		if err != nil {
			node.Close()
			stop()
			return nil, fmt.Errorf("loadtest: in-process %s: %w", id, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-done
			node.Close()
		}()
		t.nodes = append(t.nodes, node)
	}
	return stop, nil
}

// ingestTarget places calls through real ingest nodes, in turn, so placement, epochs and
// accounting are callrouter's own.
type ingestTarget struct {
	nodes []*ingest.Node
	next  atomic.Uint32
}

// Start places the call; ingest's refusals become *loadtest.RefusedError.
func (t *ingestTarget) Start(ctx context.Context, spec session.Spec) (loadtest.Call, error) {
	c, err := t.nodes[int(t.next.Add(1)-1)%len(t.nodes)].StartCall(ctx, spec)
	if err != nil {
		if wait, temp := ingest.RetryAfter(err); temp {
			re := &loadtest.RefusedError{Code: "unavailable", Reason: err.Error(), RetryAfter: wait}
			var ie *ingest.RefusedError
			if errors.As(err, &ie) {
				re.Code, re.Reason = ie.Code, ie.Reason
			}
			return nil, re
		}
		return nil, err
	}
	return ingestCall{c}, nil
}

type ingestCall struct{ c *ingest.Call }

func (c ingestCall) Send(leg int, payload []byte) error {
	err := c.c.Send(leg, payload, 0)
	switch {
	case errors.Is(err, ingest.ErrEnded):
		return fmt.Errorf("%w: %w", loadtest.ErrEnded, err)
	case errors.Is(err, ingest.ErrLeg):
		return fmt.Errorf("%w: %w", loadtest.ErrLeg, err)
	}
	return err
}

func (c ingestCall) End() { c.c.End("hangup") }
