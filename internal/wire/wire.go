// Package wire defines callrouter's JSON control, heartbeat and event messages: the bodies sent on
// the subjects of package subjects. Every message carries a version field "v"; docs/protocol.md
// documents each one for services written in other languages.
package wire

import (
	"encoding/json"
	"time"

	"github.com/callrouter/callrouter/internal/session"
)

// V is the message version this package writes.
const V = 1

// Error codes carried in replies.
const (
	CodeNoCapacity = "no_capacity" // every eligible worker is full, draining or lagging
	CodeNoWorkers  = "no_workers"  // no live worker in a requested pool
	CodeFull       = "full"        // this worker has no free slot
	CodeDraining   = "draining"    // this worker or ingest is draining
	CodeBadRequest = "bad_request" // the request did not parse or validate
	CodeStale      = "stale_epoch" // the request's epoch is older than the holder's
	CodeUnknown    = "unknown_call"
	CodeInternal   = "internal"
)

// Reply is the common part of every reply.
type Reply struct {
	V      int    `json:"v"`
	OK     bool   `json:"ok"`
	Code   string `json:"code,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// Placement is one pool's worker for a call.
type Placement struct {
	Pool   string `json:"pool"`
	Worker string `json:"worker"`
}

// PlaceRequest asks the routers (subject router.place) to place a call at an epoch.
type PlaceRequest struct {
	V       int              `json:"v"`
	Call    session.Spec     `json:"call"`
	Ingest  string           `json:"ingest"`
	Epoch   uint32           `json:"epoch"`
	Pools   []string         `json:"pools"`
	Exclude []string         `json:"exclude,omitempty"`
	Keep    []Placement      `json:"keep,omitempty"`
	Resume  []session.LegSeq `json:"resume,omitempty"`
	Reason  string           `json:"reason,omitempty"`
}

// PlaceReply answers a PlaceRequest.
type PlaceReply struct {
	Reply
	Router       string      `json:"router,omitempty"`
	Epoch        uint32      `json:"epoch"`
	Placements   []Placement `json:"placements,omitempty"`
	RetryAfterMS int         `json:"retry_after_ms,omitempty"`
}

// Offer asks one worker (subject worker.<id>.offer) to take a call at an epoch.
type Offer struct {
	V      int              `json:"v"`
	Call   session.Spec     `json:"call"`
	Ingest string           `json:"ingest"`
	Epoch  uint32           `json:"epoch"`
	Pool   string           `json:"pool"`
	Router string           `json:"router"`
	Resume []session.LegSeq `json:"resume,omitempty"`
	// Reason is the PlaceRequest's reason (new, worker_down, drain, rebalance, ingest_stall); a
	// worker names what its replay cannot fill after it: replacement, or ingest_stall when the
	// call is re-placed because ingest stalled past the router's orphan grace.
	Reason string `json:"reason,omitempty"`
}

// Reasons a worker gives when it asks for one of its calls to be moved make-before-break: it goes
// on processing the call until the new worker has it, so an offer for such a move may take longer
// to be answered without anything waiting on it (MakeBeforeBreak).
const (
	ReasonDrain     = "drain"
	ReasonRebalance = "rebalance"
)

// MakeBeforeBreak reports whether a PlaceRequest or Offer with reason moves a call that its
// current worker keeps processing until the move is done.
func MakeBeforeBreak(reason string) bool { return reason == ReasonDrain || reason == ReasonRebalance }

// ReasonIngestStall in a PlaceRequest or Offer means the call lost its worker while its ingest
// was stalled or cut off (the router reaped it as owned by nobody); ingest re-places it.
const ReasonIngestStall = "ingest_stall"

// Reasons a router gives in a Migrate it sends an ingest whose heartbeat lists a placement that
// does not hold (see docs/protocol.md, "Reconciliation"): ReasonWorkerDown when the worker is dead
// or unknown, ReasonReconcile when a live worker no longer holds the call (its release or end
// crossed a lost message). ReasonIngestStall is used instead of either when the ingest itself was
// silent past the router's miss limit.
const (
	ReasonWorkerDown = "worker_down"
	ReasonReconcile  = "reconcile"
)

// OfferReply answers an Offer.
type OfferReply struct {
	Reply
	Worker string `json:"worker"`
}

// ReasonOfferAbandoned in a Release means the router gave up waiting for the worker's answer to
// an offer at that epoch: a worker that took the call anyway drops it without publishing.
const ReasonOfferAbandoned = "offer_abandoned"

// ReasonFenced in a Migrate means the worker already dropped the call after its heartbeats
// stalled; ingest re-places it from the Progress given.
const ReasonFenced = "fenced"

// Release asks one worker (subject worker.<id>.release) to let go of a call.
type Release struct {
	V      int    `json:"v"`
	Tenant string `json:"tenant"`
	Call   string `json:"call"`
	Epoch  uint32 `json:"epoch"`
	Reason string `json:"reason"`
}

// ReleaseReply answers a Release with where the worker stopped.
type ReleaseReply struct {
	Reply
	Progress []session.LegSeq `json:"progress,omitempty"`
}

// VHeartbeat is the version of worker and ingest heartbeats and call lists: 2 since liveness
// (hb.<component>.<id>) and the call list (hb.<component>.<id>.calls) went separate ways.
// Routers still read a version-1 heartbeat, which carries its calls inline, so routers are
// upgraded first (docs/protocol.md, "Heartbeats").
const VHeartbeat = 2

// WorkerCall is one call in a worker's call list.
type WorkerCall struct {
	Tenant   string           `json:"tenant"`
	Call     string           `json:"call"`
	Epoch    uint32           `json:"epoch"`
	Ingest   string           `json:"ingest"`
	Progress []session.LegSeq `json:"progress"`
}

// WorkerHeartbeat is a worker's liveness, published on hb.worker.<id> every interval.
type WorkerHeartbeat struct {
	V    int    `json:"v"`
	ID   string `json:"id"`
	Pool string `json:"pool"`
	Mode string `json:"mode"`
	// Tenants: the worker serves only these tenants' calls (a dedicated pool); empty: every tenant.
	Tenants    []string `json:"tenants"`
	Capacity   int      `json:"capacity"`
	Active     int      `json:"active"`
	LagMS      float64  `json:"lag_ms"`
	Lagging    bool     `json:"lagging"` // lag is over the worker's own -lag-threshold: no offers
	Ready      bool     `json:"ready"`
	Draining   bool     `json:"draining"`
	IntervalMS int      `json:"interval_ms"`
	// Calls is version 1's inline call list; version 2 sends it as a WorkerState.
	Calls []WorkerCall `json:"calls,omitempty"`
}

// IngestCall is one call in an ingest's call list.
type IngestCall struct {
	Tenant     string      `json:"tenant"`
	Call       string      `json:"call"`
	Epoch      uint32      `json:"epoch"`
	Placements []Placement `json:"placements"`
	Paused     bool        `json:"paused,omitempty"` // in a secure pause
}

// IngestHeartbeat is an ingest's liveness, published on hb.ingest.<id> every interval.
type IngestHeartbeat struct {
	V          int    `json:"v"`
	ID         string `json:"id"`
	Draining   bool   `json:"draining"`
	IntervalMS int    `json:"interval_ms"`
	Active     int    `json:"active"` // calls placed (version 2)
	// Calls is version 1's inline call list; version 2 sends it as an IngestState.
	Calls []IngestCall `json:"calls,omitempty"`
}

// RouterHeartbeat is published on hb.router.<id>.
type RouterHeartbeat struct {
	V          int    `json:"v"`
	ID         string `json:"id"`
	IntervalMS int    `json:"interval_ms"`
	Workers    int    `json:"workers"`
}

// Down is published on bcast.down when a router declares a component dead.
type Down struct {
	V         int    `json:"v"`
	Component string `json:"component"`
	ID        string `json:"id"`
	Reason    string `json:"reason"`
	By        string `json:"by"`
}

// Migrate asks an ingest node (subject ingest.<id>.place) to re-place a call away from a worker:
// sent by a draining, lagging or fenced worker (a request), or by a router whose reconciliation
// found the placement stranded (published without a reply subject, repeated every sweep until the
// ingest's heartbeat shows the call at a newer epoch). A Migrate at an epoch older than the call's
// is stale and ignored.
type Migrate struct {
	V      int    `json:"v"`
	Tenant string `json:"tenant"`
	Call   string `json:"call"`
	Epoch  uint32 `json:"epoch"`
	Worker string `json:"worker"`
	Reason string `json:"reason"`
	// Progress is where the worker stopped, when it has already stopped (reason "fenced"), or
	// the last progress the router knew (reconciliation): ingest resumes the new placement from
	// there; absent, the router resumes from what it knows, else from the oldest frame in the ring.
	Progress []session.LegSeq `json:"progress,omitempty"`
}

// LegRange asks for one leg's ring frames with From <= seq < To (To 0 means up to the newest).
type LegRange struct {
	Leg  uint8 `json:"leg"`
	From int64 `json:"from"`
	To   int64 `json:"to"`
}

// ReplayRequest asks an ingest node (subject ingest.<id>.replay) for ring frames. The reply is a
// binary concatenation of frames (see package frame), each with the replayed flag set, in leg and
// sequence order; an empty body means nothing to replay; a JSON Reply means an error.
type ReplayRequest struct {
	V      int        `json:"v"`
	Tenant string     `json:"tenant"`
	Call   string     `json:"call"`
	Epoch  uint32     `json:"epoch"`
	Worker string     `json:"worker"`
	Legs   []LegRange `json:"legs"`
}

// CtlRequest is sent on ctl.<tenant>.<call> to whichever worker holds the call.
type CtlRequest struct {
	V       int               `json:"v"`
	Command string            `json:"command"`
	Args    map[string]string `json:"args,omitempty"`
}

// CtlReply answers a CtlRequest.
type CtlReply struct {
	Reply
	Worker string          `json:"worker"`
	Pool   string          `json:"pool"`
	Epoch  uint32          `json:"epoch"`
	Data   json.RawMessage `json:"data,omitempty"`
}

// Event is published on events.<tenant>.<call>.<kind>.
type Event struct {
	V      int             `json:"v"`
	Kind   string          `json:"kind"`
	Tenant string          `json:"tenant"`
	Call   string          `json:"call"`
	Epoch  uint32          `json:"epoch"`
	Time   time.Time       `json:"time"`
	Source string          `json:"source"`
	Data   json.RawMessage `json:"data,omitempty"`
}

// CallView is one call in the admin API.
type CallView struct {
	Tenant     string           `json:"tenant"`
	Call       string           `json:"call"`
	Epoch      uint32           `json:"epoch"`
	Ingest     string           `json:"ingest,omitempty"`
	Placements []Placement      `json:"placements"`
	Progress   []session.LegSeq `json:"progress,omitempty"`
	Paused     bool             `json:"paused,omitempty"` // in a secure pause (router.api.pause)
}

// WorkerView is one worker in the admin API.
type WorkerView struct {
	ID       string    `json:"id"`
	Pool     string    `json:"pool"`
	Mode     string    `json:"mode"`
	Capacity int       `json:"capacity"`
	Active   int       `json:"active"`
	LagMS    float64   `json:"lag_ms"`
	Ready    bool      `json:"ready"`
	Draining bool      `json:"draining"`
	Eligible bool      `json:"eligible"`
	LastSeen time.Time `json:"last_seen"`
}

// CallQuery asks router.api.call for one call.
type CallQuery struct {
	V      int    `json:"v"`
	Tenant string `json:"tenant"`
	Call   string `json:"call"`
}

// CallsReply answers router.api.calls.
type CallsReply struct {
	Reply
	Calls []CallView `json:"calls"`
}

// CallReply answers router.api.call.
type CallReply struct {
	Reply
	Call *CallView `json:"call,omitempty"`
}

// WorkersReply answers router.api.workers.
type WorkersReply struct {
	Reply
	Workers []WorkerView `json:"workers"`
}

// OK returns a successful Reply.
func OK() Reply { return Reply{V: V, OK: true} }

// Fail returns a failed Reply with a code and reason.
func Fail(code, reason string) Reply { return Reply{V: V, Code: code, Reason: reason} }
