package ctl

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
)

var drainOpts struct {
	wait   time.Duration
	resume bool
}

func drainFlags(fs *flag.FlagSet) {
	fs.DurationVar(&drainOpts.wait, "wait", time.Minute, "how long to wait for the worker to hold no calls (0: start the drain and return)")
	fs.BoolVar(&drainOpts.resume, "resume", false, "undo a drain: the worker takes offers again")
}

// drainResult is what drain prints with -json.
type drainResult struct {
	Worker  string `json:"worker"`
	Resumed bool   `json:"resumed,omitempty"`
	Calls   int    `json:"calls_at_start"`
	Left    int    `json:"calls_left"`
	Drained bool   `json:"drained"`
	TookMS  int64  `json:"took_ms"`
}

func runDrain(e *env) int {
	id := e.args[0]
	start := time.Now()
	ctx, cancel := context.WithTimeout(e.ctx, e.timeout)
	defer cancel()
	var rep wire.DrainReply
	if err := bus.Request(ctx, e.nc, subjects.WorkerVerb(id, wire.WorkerVerbDrain), wire.DrainRequest{V: wire.V, Resume: drainOpts.resume}, &rep); err != nil {
		return e.fail(fmt.Errorf("%w: worker %s did not answer its drain request: %v", errUnreachable, id, err))
	}
	if !rep.OK {
		return e.fail(fmt.Errorf("worker %s refused: %s: %s", id, rep.Code, rep.Reason))
	}
	res := drainResult{Worker: id, Resumed: drainOpts.resume, Calls: rep.Calls, Left: rep.Calls}
	if drainOpts.resume {
		if e.json {
			return e.emitJSON(res)
		}
		fmt.Fprintf(e.out, "%s: taking offers again (%d calls held)\n", id, rep.Calls)
		return ExitOK
	}
	if !e.json {
		fmt.Fprintf(e.out, "%s: draining, %d calls to migrate\n", id, rep.Calls)
	}
	deadline := time.Now().Add(drainOpts.wait)
	last := -1
	for drainOpts.wait > 0 {
		// The routers' view lags the worker by a heartbeat: done when a heartbeat says draining
		// with no calls.
		var ws wire.WorkersReply
		if err := e.api("workers", nil, &ws); err != nil {
			return e.fail(err)
		}
		found := false
		for _, w := range ws.Workers {
			if w.ID != id {
				continue
			}
			found = true
			res.Left = w.Active
			if w.Draining && w.Active == 0 {
				res.Drained = true
			}
		}
		if !found {
			return e.fail(fmt.Errorf("worker %s is no longer in the routers' view (stopped?)", id))
		}
		if !e.json && res.Left != last {
			fmt.Fprintf(e.out, "%s: %d calls left (%s)\n", id, res.Left, time.Since(start).Round(time.Millisecond))
			last = res.Left
		}
		if res.Drained || time.Now().After(deadline) {
			break
		}
		select {
		case <-e.ctx.Done():
			return e.fail(e.ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
	res.TookMS = time.Since(start).Milliseconds()
	if e.json {
		e.emitJSON(res)
	} else if res.Drained {
		fmt.Fprintf(e.out, "%s: drained in %s; it takes no offers until restarted or resumed (-resume)\n", id, time.Since(start).Round(time.Millisecond))
	}
	if drainOpts.wait > 0 && !res.Drained {
		fmt.Fprintf(e.errOut, "callrouterctl: %s still holds %d calls after %s\n", id, res.Left, drainOpts.wait)
		return ExitFailed
	}
	return ExitOK
}
