// Package player plays a recording (package filesrc) as a live call into an ingest node, at
// real-time pace or a speed factor. The one-process mode, cmd/ingest -play and the tests use it
// as their call source.
package player

import (
	"context"
	"time"

	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/session"
)

// Play places a call and sends the recording at real time divided by speed, then ends the call.
// frames limits the number of frames per leg (0 plays the whole recording once; more loops it).
func Play(ctx context.Context, n *ingest.Node, r *filesrc.Recording, spec session.Spec, frames int, speed float64) (*ingest.Call, error) {
	c, err := n.StartCall(ctx, spec)
	if err != nil {
		return nil, err
	}
	if frames <= 0 {
		frames = r.Len()
	}
	if speed <= 0 {
		speed = 1
	}
	tick := time.Duration(float64(frame.Duration) / speed)
	start := time.Now()
	for i := 0; i < frames; i++ {
		if d := time.Until(start.Add(time.Duration(i) * tick)); d > 0 {
			select {
			case <-ctx.Done():
				c.End("source_stopped")
				return c, ctx.Err()
			case <-c.Done():
				return c, ingest.ErrEnded
			case <-time.After(d):
			}
		}
		for leg := range r.Frames {
			if err := c.Send(leg, r.Frames[leg][i%r.Len()], 0); err != nil {
				return c, err
			}
		}
	}
	c.End("hangup")
	return c, nil
}
