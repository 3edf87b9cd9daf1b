package ingest

import (
	"errors"
	"fmt"
	"time"

	"github.com/callrouter/callrouter/internal/subjects"
)

// Config configures an ingest node.
type Config struct {
	ID                string
	Pools             []string      // worker pools every call is placed on
	PlaceTimeout      time.Duration // one placement request; a new call's retries stop at twice this
	PlaceAttempts     int           // attempts (each at a new epoch) before giving up on a new call
	ReplaceTimeout    time.Duration // how long one failover re-placement retries before leaving it to reconciliation
	HeartbeatInterval time.Duration
	MediaTimeout      time.Duration // a call with no media for this long is ended
	Ring              time.Duration // per-leg replay ring length
	RingMaxBytes      int           // per-leg replay ring bound in bytes
	DrainTimeout      time.Duration // how long SIGTERM waits for calls to end
	MaxPause          time.Duration // a secure pause not resumed for this long resumes by itself
	// StrandedAfter: an ingest that was away this long (cut off from NATS, or itself stopped:
	// its heartbeats did not go out) re-places every call the moment it is back, since the
	// routers and workers may have let them go meanwhile; 0 leaves it to the routers' notices.
	StrandedAfter time.Duration
	// PublishConns is how many NATS connections the node logs in with, its own among them.
	// nats-server caches subject matches per publishing connection, 512 subjects (256 two-leg
	// calls): above that one connection misses the cache on nearly every frame. The node's own
	// connection carries the control traffic (place requests, heartbeats, replay answers) and
	// frames only when it is the only one (1), so that the control traffic does not queue
	// behind frames; N > 1 opens N-1 more when Run starts, which carry the frames. 0
	// (automatic; only with Deps.Dial, else 1) opens one more when Run starts and another, in
	// the background, whenever the extra ones have room for fewer than half a connection's
	// calls, so that each carries at most CallsPerPublishConn calls, up to MaxPublishConns
	// connections. A call takes the first extra connection with fewer than CallsPerPublishConn
	// calls when it starts (the least-loaded one when all have as many) and keeps it for life
	// (docs/architecture.md, "Concurrency").
	PublishConns int
}

const (
	// MaxPublishConns bounds Config.PublishConns and the connections its automatic setting
	// opens, the node's own among them: 63 extra ones take 12,600 calls at CallsPerPublishConn.
	MaxPublishConns = 64
	// CallsPerPublishConn is how many calls fill a publishing connection before the next one is
	// used: 400 subjects of two-leg calls, under the server's 512-subject cache with room for
	// calls of more legs.
	CallsPerPublishConn = 200
)

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Pools:             []string{"default"},
		PlaceTimeout:      4 * time.Second,
		PlaceAttempts:     8,
		ReplaceTimeout:    30 * time.Second,
		HeartbeatInterval: 500 * time.Millisecond,
		MediaTimeout:      10 * time.Second,
		Ring:              5 * time.Second,
		RingMaxBytes:      1 << 20,
		DrainTimeout:      30 * time.Second,
		MaxPause:          10 * time.Minute,
		StrandedAfter:     3 * time.Second,
		PublishConns:      0, // automatic
	}
}

// Validate reports every bad field.
func (c *Config) Validate() error {
	var errs []error
	if err := subjects.Check("ingest id", c.ID); err != nil {
		errs = append(errs, err)
	}
	if len(c.Pools) == 0 {
		errs = append(errs, errors.New("ingest: at least one pool is needed"))
	}
	for _, p := range c.Pools {
		if err := subjects.Check("pool", p); err != nil {
			errs = append(errs, err)
		}
	}
	for name, d := range map[string]time.Duration{"place timeout": c.PlaceTimeout, "heartbeat interval": c.HeartbeatInterval,
		"media timeout": c.MediaTimeout, "ring": c.Ring, "drain timeout": c.DrainTimeout, "replace timeout": c.ReplaceTimeout, "max pause (-max-pause)": c.MaxPause} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("ingest: %s %v must be positive", name, d))
		}
	}
	if c.StrandedAfter < 0 {
		errs = append(errs, fmt.Errorf("ingest: stranded-after %v must not be negative (0: off)", c.StrandedAfter))
	}
	if c.PublishConns < 0 || c.PublishConns > MaxPublishConns {
		errs = append(errs, fmt.Errorf("ingest: -nats-publish-conns %d must be between 1 and %d, or 0 (automatic: one more connection per %d calls)", c.PublishConns, MaxPublishConns, CallsPerPublishConn))
	}
	if c.PlaceAttempts < 1 {
		errs = append(errs, fmt.Errorf("ingest: place attempts %d must be at least 1", c.PlaceAttempts))
	}
	if c.RingMaxBytes < 4096 {
		errs = append(errs, fmt.Errorf("ingest: ring max bytes %d must be at least 4096", c.RingMaxBytes))
	}
	return errors.Join(errs...)
}
