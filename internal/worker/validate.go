package worker

import (
	"fmt"
	"math"

	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
)

// Bounds on the control messages a worker takes from the bus. A message over them is answered
// bad_request before any work is done for it.
const (
	maxOfferBytes   = 64 << 10 // a call spec with its metadata; routers send a few hundred bytes
	maxReleaseBytes = 1 << 10
	maxCtlBytes     = 16 << 10
	maxCtlCommand   = 64 // bytes of a command name
	maxCtlArgs      = 32 // entries in a command's args
	maxCtlArg       = 1 << 10
	maxReasonLen    = 64
	// maxCtlPending is how many control requests may wait on one call's channel; more are
	// answered "control queue full" at once, so a flood of them cannot crowd out the audio.
	maxCtlPending = 8
)

// checkOffer validates an offer's counts and ranges for this worker's pool.
func checkOffer(o *wire.Offer, pool string) error {
	if err := o.Call.Validate(); err != nil {
		return err
	}
	if o.Pool != pool || !subjects.Valid(o.Ingest) {
		return fmt.Errorf("offer for pool %q, ingest %q; this worker is in pool %q", o.Pool, o.Ingest, pool)
	}
	if o.Epoch == 0 {
		return fmt.Errorf("epoch 0: epochs start at 1")
	}
	if len(o.Reason) > maxReasonLen {
		return fmt.Errorf("reason of %d bytes", len(o.Reason))
	}
	legs := len(o.Call.Legs)
	if len(o.Resume) > legs {
		return fmt.Errorf("%d resume entries for %d legs", len(o.Resume), legs)
	}
	var seen [session.MaxLegs]bool
	for _, r := range o.Resume {
		if int(r.Leg) >= legs {
			return fmt.Errorf("resume for leg %d of %d", r.Leg, legs)
		}
		if seen[r.Leg] {
			return fmt.Errorf("two resume entries for leg %d", r.Leg)
		}
		seen[r.Leg] = true
		if r.Next < session.FromRingStart || r.Next > math.MaxUint32 {
			return fmt.Errorf("resume leg %d from %d: want %d, %d or a sequence number", r.Leg, r.Next, session.FromRingStart, session.FromEpochStart)
		}
	}
	return nil
}

// checkRelease validates a release.
func checkRelease(r *wire.Release) error {
	if err := (session.ID{Tenant: r.Tenant, Call: r.Call}).Validate(); err != nil {
		return err
	}
	if len(r.Reason) > maxReasonLen {
		return fmt.Errorf("reason of %d bytes", len(r.Reason))
	}
	return nil
}

// checkCtl validates a control request's command and arguments.
func checkCtl(req *wire.CtlRequest) error {
	if req.Command == "" || len(req.Command) > maxCtlCommand {
		return fmt.Errorf("command of %d bytes: want 1-%d", len(req.Command), maxCtlCommand)
	}
	if len(req.Args) > maxCtlArgs {
		return fmt.Errorf("%d args: want at most %d", len(req.Args), maxCtlArgs)
	}
	for k, v := range req.Args {
		if len(k) > maxCtlArg || len(v) > maxCtlArg {
			return fmt.Errorf("an argument over %d bytes", maxCtlArg)
		}
	}
	return nil
}
