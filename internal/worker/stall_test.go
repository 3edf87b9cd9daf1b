package worker_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

// When a call is re-placed because its ingest stalled (Offer.reason ingest_stall), the part of
// the resume range the ring no longer holds is a gap of cause ingest_stall; after an ordinary
// re-placement it is replacement.
func TestResumeGapCause(t *testing.T) {
	l := startLone(t, workerConfig())
	// A fake ingest whose ring holds frames 30..39 of each leg.
	sub, err := l.nc.Subscribe(subjects.IngestVerb("in1", subjects.IngestVerbReplay), func(m *nats.Msg) {
		var req wire.ReplayRequest
		if json.Unmarshal(m.Data, &req) != nil || len(req.Legs) != 1 {
			return
		}
		var out []byte
		for seq := uint32(30); seq < 40; seq++ {
			h := frame.Header{Flags: frame.FlagReplayed, Codec: frame.CodecPCMU, Leg: req.Legs[0].Leg, SampleRate: 8000,
				Epoch: 1, Seq: seq, MediaTS: seq * 160, Capture: time.Now().UnixNano(), DurationUS: 20000}
			if int64(seq) >= req.Legs[0].From && (req.Legs[0].To == 0 || int64(seq) < req.Legs[0].To) {
				out, _ = frame.Append(out, &h, make([]byte, 160))
			}
		}
		_ = m.Respond(out)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	for _, tc := range []struct{ call, reason, cause string }{
		{"stalled", wire.ReasonIngestStall, proc.CauseIngestStall},
		{"moved", "worker_down", proc.CauseReplacement},
	} {
		o := wire.Offer{Call: spec(tc.call), Epoch: 2, Reason: tc.reason,
			Resume: []session.LegSeq{{Leg: 0, Next: 10}, {Leg: 1, Next: 10}}}
		if r := l.offer(t, o); !r.OK {
			t.Fatalf("%s: offer refused: %+v", tc.call, r.Reply)
		}
		l.send(t, tc.call, 0, 2, 40, frame.FlagEpochStart)
		l.send(t, tc.call, 1, 2, 40, frame.FlagEpochStart)
		for leg := range 2 {
			k := "acme/" + tc.call + "/" + string(rune('0'+leg))
			eventually(t, 5*time.Second, k+" replayed and live frames", func() bool { return len(rec.seqsOf(k)) == 11 })
			want := proc.Gap{Leg: uint8(leg), From: 10, To: 29, Cause: tc.cause}
			if g := rec.gapsOf(k); len(g) != 1 || g[0] != want {
				t.Errorf("%s: gaps %v, want [%v]", k, g, want)
			}
		}
	}
}

// A replay asked while no ingest connection holds the replay subscription (the ingest's own
// connection reconnecting after its NATS node died) is asked again until the replay timeout,
// not given up at once: the frames come from the ring once the ingest is back, none lost.
func TestReplayWaitsForIngestToReconnect(t *testing.T) {
	l := startLone(t, workerConfig())
	const call = "ingest-away"
	o := wire.Offer{Call: spec(call), Epoch: 2, Reason: "worker_down", Resume: []session.LegSeq{{Leg: 0, Next: 10}, {Leg: 1, Next: 10}}}
	if r := l.offer(t, o); !r.OK {
		t.Fatalf("offer refused: %+v", r.Reply)
	}
	// The ingest's replay responder comes back 300 ms after the live frames that make the worker
	// ask: the first requests find no responders.
	back := make(chan *nats.Subscription, 1)
	time.AfterFunc(300*time.Millisecond, func() {
		sub, err := l.nc.Subscribe(subjects.IngestVerb("in1", subjects.IngestVerbReplay), func(m *nats.Msg) {
			var req wire.ReplayRequest
			if json.Unmarshal(m.Data, &req) != nil || len(req.Legs) != 1 {
				return
			}
			var out []byte
			for seq := uint32(10); seq < 40; seq++ {
				h := frame.Header{Flags: frame.FlagReplayed, Codec: frame.CodecPCMU, Leg: req.Legs[0].Leg, SampleRate: 8000,
					Epoch: 2, Seq: seq, MediaTS: seq * 160, Capture: time.Now().UnixNano(), DurationUS: 20000}
				if int64(seq) >= req.Legs[0].From && int64(seq) < req.Legs[0].To {
					out, _ = frame.Append(out, &h, make([]byte, 160))
				}
			}
			_ = m.Respond(out)
		})
		if err != nil {
			t.Error(err)
		}
		back <- sub
	})
	l.send(t, call, 0, 2, 40, frame.FlagEpochStart)
	l.send(t, call, 1, 2, 40, frame.FlagEpochStart)
	defer func() { (<-back).Unsubscribe() }()
	for leg := range 2 {
		k := "acme/" + call + "/" + string(rune('0'+leg))
		eventually(t, 10*time.Second, k+" replayed and live frames", func() bool { return len(rec.seqsOf(k)) == 31 })
		if g := rec.gapsOf(k); len(g) != 0 {
			t.Errorf("%s: gaps %v, want none (the ring had every frame)", k, g)
		}
	}
}
