package worker

import (
	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/session"
)

// Offers come in on one subscription, but each is set up on a goroutine of its own: setting one
// up can wait (up to stoppingWait for a call that is stopping; a subscription write behind a
// full connection buffer), and taken one after another, the offers of a burst of new calls each
// waited for every wait before their own. When setting up still flushed (a server round trip
// that, on a busy machine, queued behind the frames the server was delivering to this worker),
// that was a cause of the 2,500-call load test's setup p99 of 332 ms; taken together, the waits
// overlap.
//
// At most offerConcurrency offers are set up at once; past that the subscription waits, and
// offers queue in it as before. Offers of one call are set up one after another, in the order
// they came: a later epoch never advances a call that an earlier offer has reserved but not yet
// accepted (and may still refuse).

// offerConcurrency bounds the offers a worker sets up at once. A variable so that tests and
// benchmarks can compare it with one at a time.
var offerConcurrency = 64

// dispatchOffer runs set(true) for an offer of call id on a goroutine of w.group, after the
// offers of the same call that came before it, or set(false) on the calling goroutine once the
// worker is shutting down. It runs on the offer subscription's goroutine, the only one that
// adds to w.offerQ; it blocks while offerConcurrency offers are being set up.
func (w *Worker) dispatchOffer(id session.ID, set func(ok bool)) {
	w.offerMu.Lock()
	if q, busy := w.offerQ[id]; busy {
		w.offerQ[id] = append(q, set) // run by the goroutine setting up the call's earlier offer
		w.offerMu.Unlock()
		return
	}
	w.offerQ[id] = nil
	w.offerMu.Unlock()
	w.offerSem <- struct{}{}
	if w.group.Go(func() { w.setUpOffers(id, set) }) {
		return
	}
	<-w.offerSem
	// Nothing was queued behind set meanwhile: only this goroutine queues.
	w.offerMu.Lock()
	delete(w.offerQ, id)
	w.offerMu.Unlock()
	set(false)
}

// setUpOffers runs set, then each offer of call id queued behind it, and frees the call's place
// in w.offerQ and its share of w.offerSem once none is left.
func (w *Worker) setUpOffers(id session.ID, set func(bool)) {
	defer func() { <-w.offerSem }()
	for {
		func() {
			defer guard.Recover("worker_offer", w.log, nil) // setUp frees the slot as the panic unwinds
			set(true)
		}()
		w.offerMu.Lock()
		q := w.offerQ[id]
		if len(q) == 0 {
			delete(w.offerQ, id)
			w.offerMu.Unlock()
			return
		}
		set, w.offerQ[id] = q[0], q[1:]
		w.offerMu.Unlock()
	}
}
