package worker_test

import (
	"encoding/json"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
)

// Offers, releases and control requests that are too large, or whose counts or ranges are out
// of bounds, are answered bad_request and change nothing; a good call next to them is unharmed.
func TestJunkControlMessages(t *testing.T) {
	l := startLone(t, workerConfig())
	if r := l.offer(t, wire.Offer{Call: spec("good"), Epoch: 1}); !r.OK {
		t.Fatalf("good offer refused: %+v", r.Reply)
	}
	big := spec("big")
	big.Meta = map[string]string{"junk": strings.Repeat("x", 100<<10)}
	nineLegs := spec("nine")
	for i := len(nineLegs.Legs); i < session.MaxLegs+1; i++ {
		nineLegs.Legs = append(nineLegs.Legs, session.Leg{Index: uint8(i), Name: "leg" + string(rune('a'+i)), Codec: 1, Rate: 8000})
	}
	offers := map[string]wire.Offer{
		"epoch 0":                 {Call: spec("e0"), Epoch: 0},
		"no legs":                 {Call: session.Spec{ID: session.ID{Tenant: "acme", Call: "nolegs"}}, Epoch: 1},
		"too many legs":           {Call: nineLegs, Epoch: 1},
		"oversize":                {Call: big, Epoch: 1},
		"more resume than legs":   {Call: spec("r3"), Epoch: 2, Resume: []session.LegSeq{{Leg: 0, Next: 1}, {Leg: 1, Next: 1}, {Leg: 1, Next: 2}}},
		"resume leg out of range": {Call: spec("r9"), Epoch: 2, Resume: []session.LegSeq{{Leg: 7, Next: 1}}},
		"resume leg twice":        {Call: spec("r2"), Epoch: 2, Resume: []session.LegSeq{{Leg: 0, Next: 1}, {Leg: 0, Next: 5}}},
		"resume before ring":      {Call: spec("rneg"), Epoch: 2, Resume: []session.LegSeq{{Leg: 0, Next: -3}}},
		"resume past uint32":      {Call: spec("rbig"), Epoch: 2, Resume: []session.LegSeq{{Leg: 0, Next: 1 << 40}}},
		"bad tenant":              {Call: session.Spec{ID: session.ID{Tenant: "a.b", Call: "x"}, Legs: spec("x").Legs}, Epoch: 1},
		"other pool":              {Call: spec("pool"), Epoch: 1, Pool: "elsewhere"},
		"bad ingest":              {Call: spec("ing"), Epoch: 1, Ingest: "in.*"},
		"long reason":             {Call: spec("why"), Epoch: 1, Reason: strings.Repeat("r", 1000)},
	}
	for name, o := range offers {
		if r := l.offer(t, o); r.OK || r.Code != wire.CodeBadRequest {
			t.Errorf("offer %s: answered %+v, want bad_request", name, r.Reply)
		}
	}
	for name, raw := range map[string]string{"not json": "{", "array": "[1,2]", "huge": `{"v":1,"pad":"` + strings.Repeat("x", 200<<10) + `"}`} {
		if r := l.offerRaw(t, []byte(raw)); r.OK || r.Code != wire.CodeBadRequest {
			t.Errorf("offer %s: answered %+v, want bad_request", name, r.Reply)
		}
	}
	if n := l.w.Calls(); n != 1 {
		t.Fatalf("worker holds %d calls after junk offers, want 1", n)
	}

	releases := map[string]string{
		"not json":     "nope",
		"bad call":     `{"v":1,"tenant":"acme","call":"a b","epoch":1}`,
		"empty tenant": `{"v":1,"tenant":"","call":"good","epoch":1}`,
		"long reason":  `{"v":1,"tenant":"acme","call":"good","epoch":1,"reason":"` + strings.Repeat("r", 1000) + `"}`,
		"oversize":     `{"v":1,"tenant":"acme","call":"good","epoch":1,"pad":"` + strings.Repeat("x", 4<<10) + `"}`,
	}
	for name, raw := range releases {
		m, err := l.nc.Request(subjects.WorkerVerb(l.id, subjects.WorkerVerbRelease), []byte(raw), 5*time.Second)
		if err != nil {
			t.Fatalf("release %s: %v", name, err)
		}
		var r wire.ReleaseReply
		if err := json.Unmarshal(m.Data, &r); err != nil || r.OK || r.Code != wire.CodeBadRequest {
			t.Errorf("release %s: answered %s, want bad_request", name, m.Data)
		}
	}
	if n := l.w.Calls(); n != 1 {
		t.Fatalf("worker holds %d calls after junk releases, want 1", n)
	}

	manyArgs := map[string]string{}
	for i := range 100 {
		manyArgs[strings.Repeat("k", i+1)] = "v"
	}
	ctls := map[string]any{
		"not json":      "{{",
		"no command":    wire.CtlRequest{V: 1},
		"long command":  wire.CtlRequest{V: 1, Command: strings.Repeat("c", 100)},
		"too many args": wire.CtlRequest{V: 1, Command: "status", Args: manyArgs},
		"long arg":      wire.CtlRequest{V: 1, Command: "status", Args: map[string]string{"k": strings.Repeat("v", 2000)}},
		"oversize":      wire.CtlRequest{V: 1, Command: "status", Args: map[string]string{"k": strings.Repeat("v", 20<<10)}},
	}
	for name, req := range ctls {
		var data []byte
		if s, ok := req.(string); ok {
			data = []byte(s)
		} else {
			data, _ = json.Marshal(req)
		}
		m, err := l.nc.Request(subjects.Ctl("acme", "good"), data, 5*time.Second)
		if err != nil {
			t.Fatalf("ctl %s: %v", name, err)
		}
		var r wire.CtlReply
		if err := json.Unmarshal(m.Data, &r); err != nil || r.OK || r.Code != wire.CodeBadRequest {
			t.Errorf("ctl %s: answered %s, want bad_request", name, m.Data)
		}
	}
	// The good call still answers and ends normally.
	data, _ := json.Marshal(wire.CtlRequest{V: 1, Command: "status"})
	m, err := l.nc.Request(subjects.Ctl("acme", "good"), data, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var r wire.CtlReply
	if err := json.Unmarshal(m.Data, &r); err != nil || !r.OK {
		t.Fatalf("status after junk: %s", m.Data)
	}
	if rep := l.release(t, wire.Release{Tenant: "acme", Call: "good", Epoch: 1, Reason: "test"}); !rep.OK {
		t.Fatalf("release of the good call: %+v", rep.Reply)
	}
}

// gateProc ("wtgate") holds every frame of calls named gate-* until the test closes frameGate:
// a call whose goroutine is busy.
type gateProc struct{}
type gateCall struct{ gated bool }

var frameGate atomic.Pointer[chan struct{}] // set by each run of the test

func init() {
	proc.Register("wtgate", func(proc.Options) (proc.Processor, error) { return gateProc{}, nil })
}

func (gateProc) Start(c proc.Call) (proc.Handler, error) {
	return gateCall{strings.HasPrefix(c.Spec().Call, "gate-")}, nil
}
func (g gateCall) Frame(*proc.Frame) {
	if g.gated {
		<-*frameGate.Load()
	}
}
func (gateCall) Stop(string) {}

// A flood of control requests to a busy call is answered at once beyond a few waiting, instead
// of filling the call's channel (where they would crowd out its audio) and timing out.
func TestControlFloodIsBounded(t *testing.T) {
	gate := make(chan struct{})
	frameGate.Store(&gate)
	wc := workerConfig()
	wc.Processors = []string{"wtgate"}
	l := startLone(t, wc)
	if r := l.offer(t, wire.Offer{Call: spec("gate-1"), Epoch: 1}); !r.OK {
		t.Fatalf("offer refused: %+v", r.Reply)
	}
	l.send(t, "gate-1", 0, 1, 0, frame.FlagEpochStart) // the call's goroutine now waits in Frame
	defer close(gate)
	data, _ := json.Marshal(wire.CtlRequest{V: 1, Command: "status"})
	const flood = 40
	var full atomic.Int32
	var wg sync.WaitGroup
	for range flood {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := l.nc.Request(subjects.Ctl("acme", "gate-1"), data, 2*time.Second)
			if err != nil {
				return // waiting behind the busy call
			}
			var r wire.CtlReply
			if json.Unmarshal(m.Data, &r) == nil && !r.OK && strings.Contains(r.Reason, "control queue full") {
				full.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := full.Load(); n < flood-8 {
		t.Fatalf("%d of %d control requests to a busy call were refused at once, want at least %d", n, flood, flood-8)
	}
}
