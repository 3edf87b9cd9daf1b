package router

import (
	"errors"
	"fmt"
	"time"

	"github.com/callrouter/callrouter/internal/subjects"
)

// Config configures a router replica.
type Config struct {
	ID                string
	HeartbeatInterval time.Duration // the router's own heartbeat
	Misses            int           // heartbeats a component may miss before it is declared down
	OfferTimeout      time.Duration // how long a worker has to answer an offer
	MoveOfferTimeout  time.Duration // OfferTimeout for a make-before-break move, if longer (see DefaultConfig)
	OfferAttempts     int           // workers tried per pool before refusing
	OrphanGrace       time.Duration // how long a worker may hold a call no ingest owns
	ReconcileGrace    time.Duration // how long an ingest may list a worker that does not hold the call
	RetryAfter        time.Duration // suggested retry delay in refusals
	MaxInflight       int           // placements handled at once
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		HeartbeatInterval: 500 * time.Millisecond,
		Misses:            3,
		OfferTimeout:      time.Second,
		OfferAttempts:     3,
		OrphanGrace:       3 * time.Second,
		ReconcileGrace:    2 * time.Second,
		RetryAfter:        time.Second,
		MaxInflight:       64,

		// A call moved make-before-break (drain, rebalance) is processed by its current worker
		// meanwhile, so a late answer costs nothing, while giving up costs the taking worker a
		// release and the move a retry, which on a starved machine repeat until the drain runs
		// out of time. Below ingest's 4 s place timeout.
		MoveOfferTimeout: 3 * time.Second,
	}
}

// Validate reports every bad field.
func (c *Config) Validate() error {
	var errs []error
	if err := subjects.Check("router id", c.ID); err != nil {
		errs = append(errs, err)
	}
	if c.HeartbeatInterval <= 0 || c.OfferTimeout <= 0 || c.OrphanGrace <= 0 || c.ReconcileGrace <= 0 || c.RetryAfter <= 0 {
		errs = append(errs, errors.New("router: heartbeat interval, offer timeout, orphan and reconcile grace and retry-after must be positive"))
	}
	if c.MoveOfferTimeout <= 0 {
		errs = append(errs, fmt.Errorf("router: -move-offer-timeout %v must be positive", c.MoveOfferTimeout))
	}
	if c.Misses < 1 || c.OfferAttempts < 1 || c.MaxInflight < 1 {
		errs = append(errs, fmt.Errorf("router: misses %d, offer attempts %d and max inflight %d must be at least 1", c.Misses, c.OfferAttempts, c.MaxInflight))
	}
	return errors.Join(errs...)
}
