package worker

import (
	"bytes"
	"encoding/json"
	"runtime"
	"strings"
	"testing"

	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/rs/zerolog"
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

// A call's log events carry its tenant, id and joining epoch, after the worker's own fields,
// and its logger does not copy the worker's context for every call.
func TestCallLoggerFields(t *testing.T) {
	var buf bytes.Buffer
	w := &Worker{cfg: DefaultConfig(), log: zerolog.New(&buf).With().Str("worker", "w1").Logger()}
	o := &wire.Offer{Call: session.Spec{ID: session.ID{Tenant: "t1", Call: "c1"}, Legs: make([]session.Leg, 2)}, Epoch: 7}
	c := newCall(w, o)
	c.log.Info().Str("reason", "x").Msg("call stopped")
	c.Log().Warn().Msg("from a processor")
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if ev["worker"] != "w1" || ev["tenant"] != "t1" || ev["call"] != "c1" || ev["epoch"] != float64(7) {
			t.Errorf("event without the call's fields: %s", line)
		}
	}
	// With() would hold a 500-byte copy of the worker's context per call.
	per := int64(1 << 30)
	for range 5 { // the least of a few tries: another goroutine may allocate meanwhile
		var a, b runtime.MemStats
		runtime.ReadMemStats(&a)
		for range 100 {
			c.log = w.log.Hook(callFields{c})
		}
		runtime.ReadMemStats(&b)
		per = min(per, int64(b.TotalAlloc-a.TotalAlloc)/100)
	}
	if per > 64 {
		t.Errorf("a call's logger allocates %d bytes, want at most 64", per)
	}
}
