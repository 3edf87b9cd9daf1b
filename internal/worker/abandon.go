package worker

import (
	"time"

	"github.com/callrouter/callrouter/internal/session"
)

// A router that gives up waiting for an offer's answer sends the worker a Release with
// wire.ReasonOfferAbandoned and offers the call, at the same epoch, to another worker. Offers and
// releases come on subscriptions of their own, so on a loaded worker the release can be handled
// before the offer it abandons, which then still waits in the offer subscription: found nothing,
// the release used to be dropped and the late offer taken, and two workers held the call at one
// epoch, both processing every frame, until the orphan sweep released this one. The worker
// therefore remembers abandoned epochs for a while and refuses their offers.

// abandonTTL is how long an abandoned epoch is remembered: longer than any offer waits in the
// worker's offer subscription on a machine that is still serving calls.
const abandonTTL = time.Minute

// maxAbandoned bounds the memory: past it the oldest record gives way (the orphan sweep still
// releases a call taken from an offer that was forgotten).
const maxAbandoned = 16384

// abandoned is one call's highest abandoned epoch and when it was recorded (w.mono()).
type abandoned struct {
	epoch uint32
	at    int64
}

// abandonLocked records that the offer of call id at epoch was abandoned by its router. Must hold
// w.mu.
func (w *Worker) abandonLocked(id session.ID, epoch uint32, now int64) {
	if w.abandoned == nil {
		w.abandoned = map[session.ID]abandoned{}
	}
	if a, ok := w.abandoned[id]; ok {
		w.abandoned[id] = abandoned{max(a.epoch, epoch), now}
		return
	}
	if len(w.abandoned) >= maxAbandoned {
		w.expireAbandonedLocked(now)
	}
	if len(w.abandoned) >= maxAbandoned {
		var oldest session.ID
		at := int64(-1)
		for k, a := range w.abandoned {
			if at < 0 || a.at < at {
				oldest, at = k, a.at
			}
		}
		delete(w.abandoned, oldest)
	}
	w.abandoned[id] = abandoned{epoch, now}
}

// wasAbandonedLocked reports whether an offer of call id at epoch was abandoned by its router. Must
// hold w.mu.
func (w *Worker) wasAbandonedLocked(id session.ID, epoch uint32) bool {
	a, ok := w.abandoned[id]
	return ok && epoch <= a.epoch
}

// expireAbandonedLocked forgets abandoned epochs older than abandonTTL. Must hold w.mu.
func (w *Worker) expireAbandonedLocked(now int64) {
	for k, a := range w.abandoned {
		if now-a.at > int64(abandonTTL) {
			delete(w.abandoned, k)
		}
	}
}
