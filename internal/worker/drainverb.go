package worker

import (
	"context"
	"encoding/json"
	"sync"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

// maxDrainRequestBytes bounds a worker.<id>.drain request.
const maxDrainRequestBytes = 1024

// opDrain is a drain an operator started over NATS (worker.<id>.drain): the worker stops taking
// offers and migrates its calls away make-before-break, as on SIGTERM, but keeps running (and
// heartbeating draining) until it is stopped or told to resume.
type opDrain struct {
	mu     sync.Mutex
	active bool
	cancel context.CancelFunc
}

// subscribeDrain serves worker.<id>.drain until Run ends; run is Run's context, whose end (the
// shutdown drain) a resume must not undo.
func (w *Worker) subscribeDrain(run context.Context, sub func(*nats.Subscription, error) error) error {
	return sub(w.nc.Subscribe(subjects.WorkerVerb(w.cfg.ID, wire.WorkerVerbDrain), guard.Handler("worker_drain", w.log, func(m *nats.Msg) {
		w.onDrainRequest(run, m)
	})))
}

func (w *Worker) onDrainRequest(run context.Context, m *nats.Msg) {
	reply := func(r wire.Reply, draining bool, calls int) {
		bus.Respond(m, wire.DrainReply{Reply: r, Worker: w.cfg.ID, Draining: draining, Calls: calls})
	}
	var req wire.DrainRequest
	if len(m.Data) > maxDrainRequestBytes || json.Unmarshal(m.Data, &req) != nil {
		reply(wire.Fail(wire.CodeBadRequest, `want {"v":1} or {"v":1,"resume":true}`), false, 0)
		return
	}
	w.op.mu.Lock()
	defer w.op.mu.Unlock()
	calls := w.snapshot()
	if run.Err() != nil || w.closed.Load() {
		reply(wire.Fail(wire.CodeDraining, "worker is shutting down"), true, len(calls))
		return
	}
	if req.Resume {
		if w.op.active {
			w.op.cancel()
			w.op.active = false
			w.mu.Lock()
			w.draining = false
			w.mu.Unlock()
			w.health.SetReady(true)
			w.log.Info().Msg("drain undone by request: taking offers again")
		}
		reply(wire.OK(), false, len(calls))
		return
	}
	if w.op.active {
		reply(wire.OK(), true, len(calls))
		return
	}
	// Draining before the migrations start, and the calls to migrate taken after it, so no offer
	// lands in between: one accepted before the flag is in the list, one after it is refused.
	w.mu.Lock()
	w.draining = true
	w.mu.Unlock()
	calls = w.snapshot()
	w.health.SetReady(false)
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.DrainTimeout)
	started := w.group.Go(func() {
		defer cancel()
		sem := make(chan struct{}, 32)
		var wg sync.WaitGroup
		for _, c := range calls {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
			}
			if ctx.Err() != nil {
				break
			}
			wg.Add(1)
			if !w.group.Go(func() {
				defer func() { <-sem; wg.Done() }()
				w.migrateUntil(ctx, c, wire.ReasonDrain)
			}) {
				<-sem
				wg.Done()
			}
		}
		wg.Wait()
	})
	if !started {
		cancel()
		reply(wire.Fail(wire.CodeDraining, "worker is shutting down"), true, len(calls))
		return
	}
	w.op.active, w.op.cancel = true, cancel
	w.log.Info().Int("calls", len(calls)).Msg("draining by request")
	reply(wire.OK(), true, len(calls))
}
