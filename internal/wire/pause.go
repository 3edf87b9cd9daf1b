package wire

import (
	"fmt"
	"time"

	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
)

// Pause reasons carried in the "resumed" event besides the requester's own.
const (
	// ResumeMaxPause: the pause reached the ingest node's -max-pause and ended by itself.
	ResumeMaxPause = "max_pause"
)

// MaxPauseText bounds PauseRequest.Reason and PauseRequest.By.
const MaxPauseText = 128

// PauseRequest pauses or resumes a call's media processing (a secure pause, e.g. while a card
// number is taken). It is sent to the ingest node that owns the call (ingest.<id>.pause) or to any
// router (router.api.pause), which forwards it to the owner; the owner answers with a PauseReply.
// While paused, ingest publishes every frame without its audio (frame.FlagPaused) and masks DTMF
// digits in its events. Pausing a paused call (or resuming a running one) changes nothing and is
// answered OK. A request holds or lifts the operator's pause only: a pause the media stream
// itself holds (an AudioHook client's) stays until the stream resumes.
type PauseRequest struct {
	V      int    `json:"v"`
	Tenant string `json:"tenant"`
	Call   string `json:"call"`
	Paused bool   `json:"paused"`           // true: pause; false: resume
	Reason string `json:"reason,omitempty"` // free text for the event and the log
	By     string `json:"by,omitempty"`     // who asked (an agent or service id), for the audit trail
}

// Check validates a PauseRequest before it is acted on.
func (r *PauseRequest) Check() error {
	if err := subjects.Check("tenant", r.Tenant); err != nil {
		return err
	}
	if err := subjects.Check("call", r.Call); err != nil {
		return err
	}
	if len(r.Reason) > MaxPauseText || len(r.By) > MaxPauseText {
		return fmt.Errorf("reason and by are at most %d bytes", MaxPauseText)
	}
	return nil
}

// PauseReply answers a PauseRequest with the call's pause state after it.
type PauseReply struct {
	Reply
	Ingest string `json:"ingest,omitempty"`
	Paused bool   `json:"paused"`
	// Since is when the current pause began; Until when it ends by itself (-max-pause). Both are
	// absent when the call is not paused.
	Since time.Time `json:"since,omitzero"`
	Until time.Time `json:"until,omitzero"`
	// Sources names who holds the pause ("operator", "stream"): a resume lifts only its
	// requester's hold, so the call stays paused while another source holds it.
	Sources []string `json:"sources,omitempty"`
	// Seq is, per leg, the first sequence number of the pause (paused) or after it (resumed).
	Seq []session.LegSeq `json:"seq,omitempty"`
}
