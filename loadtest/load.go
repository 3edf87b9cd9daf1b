package loadtest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
)

// load drives one phase: it starts calls at the ramp rate up to the concurrency, replaces the
// ones that end while the run time lasts, and hands each set-up call to the pacer.
type load struct {
	r      *runner
	col    *Collector
	tgt    Target
	pacer  *pacer
	prefix string

	seq       atomic.Int64
	started   atomic.Int64
	completed atomic.Int64 // set up and handed to the pacer
	refused   atomic.Int64
	failed    atomic.Int64
	active    atomic.Int64
	peak      atomic.Int64 // most calls active at once
	starts    sync.WaitGroup

	errMu sync.Mutex
	errs  map[string]int
}

func (ld *load) fail(err error) {
	ld.errMu.Lock()
	defer ld.errMu.Unlock()
	if ld.errs == nil {
		ld.errs = map[string]int{}
	}
	msg := err.Error()
	if len(msg) > 200 {
		msg = msg[:200]
	}
	ld.errs[msg]++
}

func (ld *load) errorList() []string {
	ld.errMu.Lock()
	defer ld.errMu.Unlock()
	var out []string
	for m, n := range ld.errs {
		out = append(out, fmt.Sprintf("%d× %s", n, m))
	}
	if len(out) > 20 {
		out = out[:20]
	}
	return out
}

func (ld *load) drive(ctx context.Context) {
	cfg := &ld.r.cfg
	slots := make(chan struct{}, cfg.Calls)
	inflight := make(chan struct{}, cfg.StartConcurrency)
	every := time.Duration(float64(time.Second) / cfg.Ramp)
	var until <-chan time.Time
	if cfg.RunTime > 0 {
		t := time.NewTimer(cfg.RunTime)
		defer t.Stop()
		until = t.C
	}
	allDone := make(chan struct{}, cfg.Calls)
	next := time.Now()
	for n := 0; cfg.RunTime > 0 || n < cfg.Calls; n++ {
		select { // a free call slot
		case slots <- struct{}{}:
		case <-until:
			return
		case <-ctx.Done():
			return
		}
		if d := time.Until(next); d > 0 { // the ramp
			select {
			case <-time.After(d):
			case <-until:
				<-slots
				return
			case <-ctx.Done():
				<-slots
				return
			}
		}
		next = next.Add(every)
		if now := time.Now(); next.Before(now.Add(-time.Second)) {
			next = now // do not burst to catch up after a stall
		}
		inflight <- struct{}{}
		ld.starts.Add(1)
		go func() {
			defer ld.starts.Done()
			ok := ld.startCall(ctx, slots, allDone)
			<-inflight
			if !ok {
				<-slots
				if cfg.RunTime == 0 {
					allDone <- struct{}{}
				}
			}
		}()
	}
	// Each call played once: wait for all of them.
	for i := 0; i < cfg.Calls; i++ {
		select {
		case <-allDone:
		case <-ctx.Done():
			return
		}
	}
}

// startCall sets one call up and hands it to the pacer; false means it was not set up.
func (ld *load) startCall(ctx context.Context, slots chan struct{}, allDone chan struct{}) bool {
	cfg := &ld.r.cfg
	i := ld.seq.Add(1) - 1
	rec := &ld.r.recs[int(i)%len(ld.r.recs)]
	call := fmt.Sprintf("%s-%d", ld.prefix, i)
	spec := rec.Spec(cfg.Tenant, call, map[string]string{"loadtest": ld.r.id, "input": rec.Name})
	ld.started.Add(1)
	t0 := time.Now()
	h, err := ld.tgt.Start(ctx, spec)
	if err != nil {
		if ctx.Err() != nil {
			return false
		}
		if wait, temp := retryAfter(err); temp {
			ld.refused.Add(1)
			ld.fail(err)
			select { // hold the slot for a while, as a refused caller would
			case <-time.After(min(wait, time.Second)):
			case <-ctx.Done():
			}
			return false
		}
		ld.failed.Add(1)
		ld.fail(err)
		return false
	}
	ld.col.setupTime(time.Since(t0))
	if n, ok := h.(interface{ callID() string }); ok && n.callID() != "" {
		call = n.callID() // the ingest named the call (WHIP): the workers report under that name
	}
	ld.completed.Add(1)
	for n, p := ld.active.Add(1), ld.peak.Load(); n > p && !ld.peak.CompareAndSwap(p, n); p = ld.peak.Load() {
	}
	frames := int(cfg.CallDuration / frame.Duration)
	if frames == 0 {
		frames = rec.Len()
	}
	ld.pacer.add(&stream{call: call, h: h, rec: rec, frames: frames, done: func(st *stream) {
		if st.sendErr != nil && !errors.Is(st.sendErr, ErrEnded) {
			ld.fail(fmt.Errorf("send: %w", st.sendErr))
		} else if st.sendErr != nil {
			ld.fail(errors.New("call ended by ingest before the recording did (media timeout or no placement)"))
		}
		ld.active.Add(-1)
		<-slots
		if cfg.RunTime == 0 {
			allDone <- struct{}{}
		}
	}})
	return true
}
