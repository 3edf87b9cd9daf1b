package worker

import (
	"testing"

	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/wire"
)

// A call's queue and channel hold the same time of audio whatever its number of legs.
func TestCallBoundsScaleWithLegs(t *testing.T) {
	cfg := DefaultConfig()
	w := &Worker{cfg: cfg}
	for _, tc := range []struct{ legs, scale int }{{1, 1}, {2, 1}, {3, 2}, {4, 2}, {session.MaxLegs, session.MaxLegs / 2}} {
		o := &wire.Offer{Call: session.Spec{ID: session.ID{Tenant: "t", Call: "c"}, Legs: make([]session.Leg, tc.legs)}}
		c := newCall(w, o)
		if cap(c.audio) != cfg.PendingMsgs*tc.scale || c.queue != cfg.QueueFrames*tc.scale {
			t.Errorf("%d legs: channel %d, queue %d; want %d, %d", tc.legs, cap(c.audio), c.queue, cfg.PendingMsgs*tc.scale, cfg.QueueFrames*tc.scale)
		}
	}
}
