package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

// These tests run one worker alone on an embedded nats-server (startLone); the test plays the
// router (offers, releases, drain) and the ingest (frames, replays, migrations) over NATS.

// holder asks ctl.<t>.<c> who holds the call: its worker and epoch, or "" when nobody answers.
func holder(t *testing.T, l *lone, call string) (string, uint32) {
	t.Helper()
	data, _ := json.Marshal(wire.CtlRequest{V: wire.V, Command: "status"})
	m, err := l.nc.Request(subjects.Ctl("acme", call), data, 5*time.Second)
	if errors.Is(err, nats.ErrNoResponders) {
		return "", 0
	}
	if err != nil {
		t.Fatalf("status of %s: %v", call, err)
	}
	var rep wire.CtlReply
	if err := json.Unmarshal(m.Data, &rep); err != nil || !rep.OK {
		t.Fatalf("status of %s: %s (%v)", call, m.Data, err)
	}
	return rep.Worker, rep.Epoch
}

func seqRange(from, to uint32) []uint32 {
	var out []uint32
	for s := from; s < to; s++ {
		out = append(out, s)
	}
	return out
}

func sameSeqs(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// An offer at a higher epoch for a call the worker holds (ingest re-placing the call's other
// pools) advances it in place while frames flow: every frame of both epochs is processed once,
// with no gap. A frame of a still newer epoch (another worker took the call) ends it silently.
func TestOfferAdvancesInPlaceThenNewerEpochSupersedes(t *testing.T) {
	l := startLone(t, workerConfig())
	const call = "adv"
	events, err := l.nc.SubscribeSync(subjects.EventsCall("acme", call))
	if err != nil {
		t.Fatal(err)
	}
	if r := l.offer(t, wire.Offer{Call: spec(call), Epoch: 1}); !r.OK {
		t.Fatalf("offer refused: %+v", r.Reply)
	}
	sendSeqs := func(epoch, from, to uint32) {
		for seq := from; seq < to; seq++ {
			flags := frame.Flags(0)
			if seq == from && (seq == 0 || epoch > 1) {
				flags = frame.FlagEpochStart
			}
			for leg := range 2 {
				l.send(t, call, uint8(leg), epoch, seq, flags)
			}
			time.Sleep(time.Millisecond)
		}
	}
	sendSeqs(1, 0, 20)
	// The offer crosses frames 20..39 of epoch 1 in flight.
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for seq := uint32(20); seq < 40; seq++ {
			for leg := range 2 {
				h := frame.Header{Codec: frame.CodecPCMU, Leg: uint8(leg), SampleRate: 8000, Epoch: 1, Seq: seq,
					MediaTS: seq * 160, Capture: time.Now().UnixNano(), DurationUS: 20000}
				buf, _ := frame.Append(nil, &h, make([]byte, 160))
				_ = l.nc.Publish(subjects.Audio("acme", call, spec(call).Legs[leg].Name), buf)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	if r := l.offer(t, wire.Offer{Call: spec(call), Epoch: 2, Reason: "rebalance"}); !r.OK {
		t.Fatalf("offer at epoch 2 refused: %+v", r.Reply)
	}
	<-sent
	if w, e := holder(t, l, call); w != l.id || e != 2 {
		t.Fatalf("held by %q at epoch %d, want %s at 2", w, e, l.id)
	}
	sendSeqs(2, 40, 60)
	for leg := range 2 {
		k := fmt.Sprintf("acme/%s/%d", call, leg)
		eventually(t, 10*time.Second, k+" frames 0..59", func() bool { return len(rec.seqsOf(k)) >= 60 })
		if got := rec.seqsOf(k); !sameSeqs(got, seqRange(0, 60)) {
			t.Errorf("%s processed %v, want 0..59 once each", k, got)
		}
		if g := rec.gapsOf(k); len(g) != 0 {
			t.Errorf("%s gaps %v, want none", k, g)
		}
	}
	if l.w.Calls() != 1 || len(rec.stopsOf("acme/"+call)) != 0 {
		t.Fatalf("after the in-place advance: %d calls, stops %v; want the call held", l.w.Calls(), rec.stopsOf("acme/"+call))
	}
	// Another worker holds epoch 3 now: its first frame ends this worker's part, silently.
	l.send(t, call, 0, 3, 60, frame.FlagEpochStart)
	eventually(t, 10*time.Second, "the superseded call to go", func() bool { return l.w.Calls() == 0 })
	if s := rec.stopsOf("acme/" + call); len(s) != 1 || s[0] != proc.StopSuperseded {
		t.Errorf("stops %v, want [%s]", s, proc.StopSuperseded)
	}
	if got := rec.seqsOf(fmt.Sprintf("acme/%s/0", call)); len(got) != 60 {
		t.Errorf("leg 0 processed %d frames, want 60 (not the newer epoch's)", len(got))
	}
	if w, _ := holder(t, l, call); w != "" {
		t.Errorf("%s still answers for the superseded call", w)
	}
	for {
		m, err := events.NextMsg(300 * time.Millisecond)
		if err != nil {
			break
		}
		t.Errorf("a superseded worker published %s: %s", m.Subject, m.Data)
	}
}

// An offer and a release for the same call crossing each other (a router that gave up on the
// offer): a release answered OK leaves nobody holding the call; a release that found nothing
// (it came first) leaves the call held at the offered epoch by the worker that accepted it,
// unless it abandoned that offer: then the offer is refused (its router placed the call
// elsewhere at that epoch) and nobody holds the call.
func TestOfferAndReleaseCrossing(t *testing.T) {
	l := startLone(t, workerConfig())
	const rounds = 24
	type result struct {
		offer   wire.OfferReply
		release wire.ReleaseReply
	}
	results := make([]result, rounds)
	for i := range rounds { // one pair at a time, the release later each round
		var wg sync.WaitGroup
		call := "x" + strconv.Itoa(i)
		reason := "test"
		if i%2 == 1 {
			reason = wire.ReasonOfferAbandoned
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				time.Sleep(time.Duration(i) * 50 * time.Microsecond) // the release ahead, or about to be
			}
			o, _ := json.Marshal(wire.Offer{V: wire.V, Call: spec(call), Ingest: "in1", Pool: "default", Epoch: 1})
			m, err := l.nc.Request(subjects.WorkerVerb(l.id, subjects.WorkerVerbOffer), o, 10*time.Second)
			if err != nil {
				t.Errorf("%s offer: %v", call, err)
				return
			}
			_ = json.Unmarshal(m.Data, &results[i].offer)
		}()
		go func() {
			defer wg.Done()
			if i%2 == 1 {
				time.Sleep(time.Duration(i) * 200 * time.Microsecond) // spread over the offer's work
			}
			r, _ := json.Marshal(wire.Release{V: wire.V, Tenant: "acme", Call: call, Epoch: 1, Reason: reason})
			m, err := l.nc.Request(subjects.WorkerVerb(l.id, subjects.WorkerVerbRelease), r, 10*time.Second)
			if err != nil {
				t.Errorf("%s release: %v", call, err)
				return
			}
			_ = json.Unmarshal(m.Data, &results[i].release)
		}()
		wg.Wait()
	}
	if t.Failed() {
		return
	}
	want := 0
	held := make([]bool, rounds)
	for i, r := range results {
		switch {
		case r.release.OK:
		case r.release.Code == wire.CodeUnknown && i%2 == 1:
			if r.offer.OK || r.offer.Code != wire.CodeStale {
				t.Errorf("x%d: offer after its abandonment answered %+v, want %s", i, r.offer.Reply, wire.CodeStale)
			}
		case r.release.Code == wire.CodeUnknown:
			if !r.offer.OK {
				t.Errorf("x%d: offer refused %+v with no call to collide with", i, r.offer.Reply)
			}
			held[i] = true
			want++
		default:
			t.Errorf("x%d: release answered %+v", i, r.release.Reply)
		}
	}
	eventually(t, 10*time.Second, fmt.Sprintf("%d calls held", want), func() bool { return l.w.Calls() == want })
	for i, r := range results {
		w, e := holder(t, l, "x"+strconv.Itoa(i))
		if held[i] != (w == l.id) || (held[i] && e != 1) {
			t.Errorf("x%d (release %+v): held by %q at epoch %d", i, r.release.Reply, w, e)
		}
	}
	crossed := 0
	for _, r := range results {
		if r.release.OK && r.offer.OK {
			crossed++
		}
	}
	t.Logf("%d of %d releases came before their offer, %d released an accepted one", want, rounds, crossed)
}

// A drain that arrives while offers do: every offer answered OK is for a call the worker then
// migrates away (a Migrate with reason drain reaches the call's ingest), and once the drain is
// answered every offer is refused (draining) until it is undone.
func TestDrainWhileOffersArrive(t *testing.T) {
	wc := workerConfig()
	wc.IdleTimeout = time.Minute // the calls get no frames
	l := startLone(t, wc)
	var mu sync.Mutex
	migrated := map[string]wire.Migrate{}
	sub, err := l.nc.Subscribe(subjects.IngestVerb("in1", subjects.IngestVerbPlace), func(m *nats.Msg) {
		var req wire.Migrate
		if err := json.Unmarshal(m.Data, &req); err != nil {
			t.Errorf("migrate %q: %v", m.Data, err)
			return
		}
		mu.Lock()
		migrated[req.Call] = req
		mu.Unlock()
		bus.Respond(m, wire.OK())
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	drain := func(resume bool) wire.DrainReply {
		var rep wire.DrainReply
		if err := bus.Request(context.Background(), l.nc, subjects.WorkerVerb(l.id, wire.WorkerVerbDrain), wire.DrainRequest{V: wire.V, Resume: resume}, &rep); err != nil {
			t.Fatal(err)
		}
		return rep
	}
	const rounds, offers = 12, 8
	for round := range rounds {
		accepted := make([]bool, offers)
		var wg sync.WaitGroup
		for i := range offers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				o, _ := json.Marshal(wire.Offer{V: wire.V, Call: spec(fmt.Sprintf("d%d-%d", round, i)), Ingest: "in1", Pool: "default", Epoch: 1})
				m, err := l.nc.Request(subjects.WorkerVerb(l.id, subjects.WorkerVerbOffer), o, 10*time.Second)
				if err != nil {
					t.Errorf("offer: %v", err)
					return
				}
				var r wire.OfferReply
				_ = json.Unmarshal(m.Data, &r)
				if !r.OK && r.Code != wire.CodeDraining {
					t.Errorf("offer refused %+v, want OK or %s", r.Reply, wire.CodeDraining)
				}
				accepted[i] = r.OK
			}()
		}
		time.Sleep(time.Duration(round%4) * time.Millisecond)
		if rep := drain(false); !rep.OK || !rep.Draining {
			t.Fatalf("drain: %+v", rep)
		}
		if r := l.offer(t, wire.Offer{Call: spec(fmt.Sprintf("late%d", round)), Epoch: 1}); r.OK || r.Code != wire.CodeDraining {
			t.Fatalf("offer after the drain was answered: %+v, want %s", r.Reply, wire.CodeDraining)
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		for i, ok := range accepted {
			call := fmt.Sprintf("d%d-%d", round, i)
			if !ok {
				continue
			}
			eventually(t, 10*time.Second, call+" migrated away by the drain", func() bool {
				mu.Lock()
				defer mu.Unlock()
				m, ok := migrated[call]
				return ok && m.Reason == "drain" && m.Epoch == 1 && m.Worker == l.id
			})
		}
		if rep := drain(true); !rep.OK || rep.Draining {
			t.Fatalf("resume: %+v", rep)
		}
		for i, ok := range accepted {
			if ok {
				if r := l.release(t, wire.Release{Tenant: "acme", Call: fmt.Sprintf("d%d-%d", round, i), Reason: "test"}); !r.OK {
					t.Fatalf("release: %+v", r.Reply)
				}
			}
		}
		eventually(t, 10*time.Second, "the calls to go", func() bool { return l.w.Calls() == 0 })
	}
}

// A full worker refuses (full) and heartbeats its load; a freed slot takes the next offer.
func TestCapacityFullRefusesUntilASlotFrees(t *testing.T) {
	wc := workerConfig()
	wc.Capacity = 2
	l := startLone(t, wc)
	for _, c := range []string{"cap-a", "cap-b"} {
		if r := l.offer(t, wire.Offer{Call: spec(c), Epoch: 1}); !r.OK {
			t.Fatalf("%s refused: %+v", c, r.Reply)
		}
	}
	if r := l.offer(t, wire.Offer{Call: spec("cap-c"), Epoch: 1}); r.OK || r.Code != wire.CodeFull {
		t.Fatalf("offer to a full worker answered %+v, want %s", r.Reply, wire.CodeFull)
	}
	hb, err := l.nc.SubscribeSync(subjects.Heartbeat(subjects.Worker, l.id))
	if err != nil {
		t.Fatal(err)
	}
	calls, err := l.nc.SubscribeSync(subjects.HeartbeatCalls(subjects.Worker, l.id))
	if err != nil {
		t.Fatal(err)
	}
	m, err := hb.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var h wire.WorkerHeartbeat
	if err := json.Unmarshal(m.Data, &h); err != nil || h.Active != 2 || h.Capacity != 2 {
		t.Fatalf("heartbeat %s (%v): want 2 of 2 active", m.Data, err)
	}
	// The call list comes whole at least every wire.FullEvery messages.
	var st wire.WorkerState
	for i := 0; !st.Full; i++ {
		m, err = calls.NextMsg(5 * time.Second)
		if err != nil || i > wire.FullEvery {
			t.Fatalf("no full call list in %d messages (%v)", i, err)
		}
		st = wire.WorkerState{}
		if err := json.Unmarshal(m.Data, &st); err != nil {
			t.Fatalf("call list %s: %v", m.Data, err)
		}
	}
	if len(st.Calls) != 2 {
		t.Fatalf("call list %s: want both calls listed", m.Data)
	}
	// A retried offer for a held call is not a new call: it is answered OK even when full.
	if r := l.offer(t, wire.Offer{Call: spec("cap-a"), Epoch: 1}); !r.OK {
		t.Fatalf("retried offer for a held call on a full worker: %+v", r.Reply)
	}
	for leg := range 2 {
		l.send(t, "cap-a", uint8(leg), 1, 0, frame.FlagEpochStart|frame.FlagLast)
	}
	eventually(t, 10*time.Second, "cap-a to end", func() bool { return l.w.Calls() == 1 })
	if r := l.offer(t, wire.Offer{Call: spec("cap-c"), Epoch: 1}); !r.OK {
		t.Fatalf("offer after a slot freed: %+v", r.Reply)
	}
	if w, e := holder(t, l, "cap-c"); w != l.id || e != 1 {
		t.Errorf("cap-c held by %q at %d", w, e)
	}
}

// A resumed call whose replay comes in parts (each reply ends with Replay-Next, as from an ingest
// whose max_payload cuts the range) gets every frame from its resume point once, then the live ones.
func TestReplayInPartsFillsTheResumeRange(t *testing.T) {
	l := startLone(t, workerConfig())
	const call, perReply = "parts", 4
	var mu sync.Mutex
	var asked []wire.ReplayRequest
	sub, err := l.nc.Subscribe(subjects.IngestVerb("in1", subjects.IngestVerbReplay), func(m *nats.Msg) {
		var req wire.ReplayRequest
		if err := json.Unmarshal(m.Data, &req); err != nil {
			t.Errorf("replay %q: %v", m.Data, err)
			return
		}
		mu.Lock()
		asked = append(asked, req)
		mu.Unlock()
		// The ring holds frames 0..39 of each leg, at epoch 1.
		var out []byte
		n := 0
		for _, r := range req.Legs {
			from, to := r.From, r.To
			if from < 0 {
				from = 0
			}
			if to <= 0 || to > 40 {
				to = 40
			}
			for seq := uint32(from); int64(seq) < to; seq++ {
				if n == perReply {
					_ = m.RespondMsg(&nats.Msg{Data: out, Header: nats.Header{wire.ReplayNextHeader: []string{fmt.Sprintf("%d %d", r.Leg, seq)}}})
					return
				}
				h := frame.Header{Flags: frame.FlagReplayed, Codec: frame.CodecPCMU, Leg: r.Leg, SampleRate: 8000,
					Epoch: 1, Seq: seq, MediaTS: seq * 160, Capture: time.Now().UnixNano(), DurationUS: 20000}
				out, _ = frame.Append(out, &h, make([]byte, 160))
				n++
			}
		}
		_ = m.Respond(out)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	o := wire.Offer{Call: spec(call), Epoch: 2, Reason: wire.ReasonWorkerDown,
		Resume: []session.LegSeq{{Leg: 0, Next: 25}, {Leg: 1, Next: 31}}}
	if r := l.offer(t, o); !r.OK {
		t.Fatalf("offer refused: %+v", r.Reply)
	}
	for seq := uint32(40); seq < 45; seq++ {
		flags := frame.Flags(0)
		if seq == 40 {
			flags = frame.FlagEpochStart
		}
		for leg := range 2 {
			l.send(t, call, uint8(leg), 2, seq, flags)
		}
	}
	for leg, from := range []uint32{25, 31} {
		k := fmt.Sprintf("acme/%s/%d", call, leg)
		eventually(t, 10*time.Second, k+" replayed and live frames", func() bool { return len(rec.seqsOf(k)) >= int(45-from) })
		if got := rec.seqsOf(k); !sameSeqs(got, seqRange(from, 45)) {
			t.Errorf("%s processed %v, want %d..44 once each", k, got, from)
		}
		if g := rec.gapsOf(k); len(g) != 0 {
			t.Errorf("%s gaps %v, want none", k, g)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(asked) < 2 {
		t.Errorf("%d replay requests, want the range asked for in parts", len(asked))
	}
	for _, r := range asked {
		if r.Worker != l.id || r.Epoch != 2 || r.Tenant != "acme" || r.Call != call {
			t.Errorf("replay request %+v, want from %s at epoch 2", r, l.id)
		}
	}
}
