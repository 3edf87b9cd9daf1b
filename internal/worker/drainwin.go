package worker

import (
	"context"
	"sync"
)

// Bounds of a drain's window of migration requests in flight.
const (
	drainWindowMax = 32
	drainWindowMin = 4
)

// drainWindow bounds the migration requests a drain has in flight, adapting to how they fare:
// each one that moves its call widens the window by one (up to drainWindowMax), and a failed one
// (refused or unanswered) halves it (down to drainWindowMin), once per window's worth, as TCP
// does. A drain's calls often all go to the same few workers, each answering its offers one at a
// time: on a starved machine 32 offers queued at one worker wait longer than the router's offer
// timeout, all of them time out and are retried into the same queue, and the drain moves nothing
// until its deadline. A narrower window keeps each offer's wait within the timeout, so the calls
// keep moving at the rate the receivers can take.
type drainWindow struct {
	mu       sync.Mutex
	limit    int
	inflight int
	gen      uint64        // bumped by each narrowing: a failure of an older request does not narrow again
	wake     chan struct{} // closed (and replaced) whenever a slot frees
}

func newDrainWindow() *drainWindow {
	return &drainWindow{limit: drainWindowMax, wake: make(chan struct{})}
}

// acquire waits for a slot; it returns the window's generation to hand to release, or false if
// ctx ended or done was closed first.
func (d *drainWindow) acquire(ctx context.Context, done <-chan struct{}) (uint64, bool) {
	for {
		d.mu.Lock()
		if d.inflight < d.limit {
			d.inflight++
			gen := d.gen
			d.mu.Unlock()
			return gen, true
		}
		wake := d.wake
		d.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return 0, false
		case <-done:
			return 0, false
		}
	}
}

// release frees the slot taken at generation gen; moved says whether the request moved its call.
func (d *drainWindow) release(gen uint64, moved bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.inflight--
	switch {
	case moved:
		d.limit = min(d.limit+1, drainWindowMax)
	case gen == d.gen:
		d.limit = max(d.limit/2, drainWindowMin)
		d.gen++
	}
	close(d.wake)
	d.wake = make(chan struct{})
}
