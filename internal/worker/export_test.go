package worker

import "github.com/callrouter/callrouter/internal/session"

// StallHeartbeats makes the worker's heartbeat loop look stalled past the fence, as after a long
// pause of the process or a starved machine.
func StallHeartbeats(w *Worker) { w.lastTick.Store(w.mono() - 10*int64(w.cfg.FenceAfter)) }

// OnOfferSubscribed runs f (nil: nothing) once each offer's subscriptions are in place, just
// before the offer is accepted, with the offer's call and epoch.
func OnOfferSubscribed(f func(id session.ID, epoch uint32)) {
	if f == nil {
		offerSubscribed.Store(nil)
		return
	}
	offerSubscribed.Store(&f)
}

// Abandoned reports whether the worker has recorded the offer of call at epoch as abandoned.
func Abandoned(w *Worker, id session.ID, epoch uint32) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.wasAbandonedLocked(id, epoch)
}

// SetOfferConcurrency sets how many offers workers created from now on set up at once (1: one
// after another, as before offers.go) and returns the previous value.
func SetOfferConcurrency(n int) int {
	old := offerConcurrency
	offerConcurrency = n
	return old
}

// OnReplayAsking runs f (nil: nothing) on a call's goroutine just before each replay request is
// sent, with the call and the epoch the request carries.
func OnReplayAsking(f func(id session.ID, epoch uint32)) {
	if f == nil {
		replayAsking.Store(nil)
		return
	}
	replayAsking.Store(&f)
}
