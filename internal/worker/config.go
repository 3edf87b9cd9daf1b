package worker

import (
	"errors"
	"fmt"
	"time"

	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/subjects"
)

// ModeSession is the mode every worker's heartbeat announces: each call goes to one worker of
// the pool, on a plain ordered subscription (routers place only on session-mode workers).
const ModeSession = "session"

// Config configures a worker.
type Config struct {
	ID   string
	Pool string
	// Tenants, when set, dedicates the worker to these tenants: it refuses other tenants' offers
	// (its NATS identity could not subscribe their audio anyway), and says so in its heartbeat so
	// routers offer it nothing else.
	Tenants           []string
	Capacity          int           // calls held at once
	QueueFrames       int           // frames a two-leg call may have waiting; beyond that the oldest is dropped (scaled for more legs)
	PendingMsgs       int           // capacity of a two-leg call's subscription channel; NATS drops what does not fit (scaled for more legs)
	MaxFrameAge       time.Duration // older live frames are dropped as stale
	IdleTimeout       time.Duration // a call with no frame for this long is reaped
	HeartbeatInterval time.Duration
	// FenceAfter: a worker whose own heartbeat loop has not run for this long (it was paused or
	// starved) assumes the routers declared it down and drops every call without publishing.
	// Match it to the routers' misses × heartbeat interval.
	FenceAfter       time.Duration
	LagThreshold     time.Duration // above this the worker reports itself lagging and sheds calls
	ShedAfter        time.Duration // how long lag must stay over the threshold before shedding
	DrainTimeout     time.Duration // how long SIGTERM waits for calls to migrate away
	ReplayTimeout    time.Duration
	Processors       []string // processor names, in order (package proc registry)
	ProcessorOptions map[string]proc.Options
	// Now is the worker's wall clock: event times and the zero of the arrival times that frames'
	// capture times are compared with. Nil means time.Now. Lag, staleness, fencing and idle
	// reaping do not depend on its offset from other hosts' clocks or on its steps (tests offset it).
	Now func() time.Time
}

// DefaultConfig returns the defaults documented in docs/protocol.md.
func DefaultConfig() Config {
	return Config{
		Pool:              "default",
		Capacity:          200,
		QueueFrames:       250,
		PendingMsgs:       500,
		MaxFrameAge:       2 * time.Second,
		IdleTimeout:       5 * time.Second,
		HeartbeatInterval: 500 * time.Millisecond,
		FenceAfter:        1500 * time.Millisecond,
		LagThreshold:      300 * time.Millisecond,
		ShedAfter:         2 * time.Second,
		DrainTimeout:      20 * time.Second,
		ReplayTimeout:     2 * time.Second,
		Processors:        []string{"accounting"},
	}
}

// Validate reports the first bad field.
func (c *Config) Validate() error {
	var errs []error
	if err := subjects.Check("worker id", c.ID); err != nil {
		errs = append(errs, err)
	}
	if err := subjects.Check("pool", c.Pool); err != nil {
		errs = append(errs, err)
	}
	for _, t := range c.Tenants {
		if err := subjects.Check("tenant", t); err != nil {
			errs = append(errs, err)
		}
	}
	pos := func(name string, v int) {
		if v <= 0 {
			errs = append(errs, fmt.Errorf("worker: %s %d must be positive", name, v))
		}
	}
	pos("capacity", c.Capacity)
	pos("queue frames", c.QueueFrames)
	pos("pending msgs", c.PendingMsgs)
	if c.QueueFrames > c.PendingMsgs {
		errs = append(errs, fmt.Errorf("worker: queue-frames %d must not exceed pending-msgs %d (a call's queue lives inside its NATS pending limit)", c.QueueFrames, c.PendingMsgs))
	}
	dur := func(name string, v time.Duration) {
		if v <= 0 {
			errs = append(errs, fmt.Errorf("worker: %s %v must be positive", name, v))
		}
	}
	dur("max frame age", c.MaxFrameAge)
	dur("idle timeout", c.IdleTimeout)
	dur("heartbeat interval", c.HeartbeatInterval)
	dur("lag threshold", c.LagThreshold)
	dur("drain timeout", c.DrainTimeout)
	dur("replay timeout", c.ReplayTimeout)
	dur("shed after", c.ShedAfter)
	if c.FenceAfter <= c.HeartbeatInterval {
		errs = append(errs, fmt.Errorf("worker: fence-after %v must exceed the heartbeat interval %v", c.FenceAfter, c.HeartbeatInterval))
	}
	if c.IdleTimeout <= 2*c.HeartbeatInterval {
		errs = append(errs, fmt.Errorf("worker: idle timeout %v must exceed two heartbeat intervals (%v)", c.IdleTimeout, 2*c.HeartbeatInterval))
	}
	if _, err := proc.Build(c.Processors, c.ProcessorOptions); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
