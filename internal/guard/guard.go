// Package guard keeps one bad message, packet or bug from taking a node down, and keeps every
// goroutine a component starts accounted for: Group starts goroutines that are refused once
// shutdown has begun and waited for at the end; Recover turns a panic into a log line, a counted
// metric and a callback (ending the one call it hit), never a crashed process.
package guard

import (
	"fmt"
	"runtime/debug"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Panics counts recovered panics by where they happened (a closed set of names chosen in code,
// never a value from the network). The owner of a process's registry registers it once
// (Register): cli.Main for a component binary, stack.Start for the one-process stack; components
// never do, since theirs may be wrapped with constant labels.
var Panics = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "callrouter_panics_total",
	Help: "Panics recovered (the call or message they hit was dropped; the process kept running), by where.",
}, []string{"where"})

// Register adds Panics to reg. A registry that already has it is left as it is, so every
// component of a one-process stack can call it on a shared registry.
func Register(reg prometheus.Registerer) {
	if err := reg.Register(Panics); err != nil {
		if _, ok := err.(prometheus.AlreadyRegisteredError); !ok {
			panic(err)
		}
	}
}

// Recover must be deferred directly (defer guard.Recover(...)). It stops a panic in progress,
// logs it with its stack, counts it under where, and calls onPanic (may be nil) with the value,
// so the caller can end the one call the panic hit.
func Recover(where string, log zerolog.Logger, onPanic func(v any)) {
	v := recover()
	if v == nil {
		return
	}
	Panics.WithLabelValues(where).Inc()
	log.Error().Str("where", where).Str("panic", fmt.Sprint(v)).Bytes("stack", debug.Stack()).Msg("panic recovered")
	if onPanic != nil {
		onPanic(v)
	}
}

// Handler wraps a NATS message handler so that a panic while handling one message is recovered
// and counted (as where) instead of ending the process. A request that panicked gets no reply;
// the requester times out as it would with a lost message.
func Handler(where string, log zerolog.Logger, h nats.MsgHandler) nats.MsgHandler {
	return func(m *nats.Msg) {
		defer Recover(where, log, nil)
		h(m)
	}
}

// Group tracks goroutines. Go refuses to start one after Close has begun, so a callback that
// fires during shutdown cannot add to a WaitGroup that is already being waited on. The zero
// value is ready to use.
type Group struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// Go runs f on a new goroutine tracked by g and reports true, or reports false without running f
// when g is closing.
func (g *Group) Go(f func()) bool {
	if !g.enter() {
		return false
	}
	go func() {
		defer g.wg.Done()
		f()
	}()
	return true
}

// Do runs f on the calling goroutine, tracked by g like a goroutine of Go (Close waits for it),
// and reports true, or reports false without running f when g is closing: for NATS callbacks,
// which run on the client's goroutines, so that Close also waits for one already running.
func (g *Group) Do(f func()) bool {
	if !g.enter() {
		return false
	}
	defer g.wg.Done()
	f()
	return true
}

// enter counts one more tracked function unless Close has begun; the caller calls g.wg.Done.
func (g *Group) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.wg.Add(1)
	return true
}

// Close refuses new goroutines and waits for the ones running. It may be called more than once.
func (g *Group) Close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.wg.Wait()
}

// Closed reports whether Close has begun.
func (g *Group) Closed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed
}
