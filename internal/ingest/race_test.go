package ingest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

// TestPlaceRequestCrossingTheEnd: a worker's request to move a call away (ingest.<id>.place,
// drain) and the call's end cross, many times over. Whichever wins, the ended call stays ended:
// the node forgets it, no re-placement keeps running, nothing is published on a leg after its
// last frame, and a request that arrives after the end is answered "unknown".
func TestPlaceRequestCrossingTheEnd(t *testing.T) {
	n, nc := testNode(t, 0)
	var mu sync.Mutex
	last := map[string]bool{} // subject → its last frame has been seen
	after := map[string]int{} // subject → frames seen after its last
	epochs := map[string]uint32{}
	audio, err := nc.Subscribe(subjects.ClassAudio+".acme.>", func(m *nats.Msg) {
		var h frame.Header
		if _, err := h.Unmarshal(m.Data); err != nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if last[m.Subject] {
			after[m.Subject]++
		}
		if h.Flags&frame.FlagLast != 0 {
			last[m.Subject] = true
		}
		epochs[m.Subject] = max(epochs[m.Subject], h.Epoch)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer audio.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	const rounds = 20
	payload := make([]byte, 320)
	for i := range rounds {
		id := session.ID{Tenant: "acme", Call: fmt.Sprintf("x-%d", i)}
		c, err := n.StartCall(context.Background(), session.Spec{ID: id, Legs: []session.Leg{{Index: 0, Name: "caller", Codec: frame.CodecL16, Rate: 8000}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Send(0, payload, 0); err != nil {
			t.Fatal(err)
		}
		req := wire.Migrate{V: wire.V, Tenant: id.Tenant, Call: id.Call, Epoch: c.Epoch(), Worker: "w1", Reason: "drain"}
		var rep wire.Reply
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := bus.Request(ctx, nc, subjects.IngestVerb("in-1", subjects.IngestVerbPlace), req, &rep); err != nil {
				t.Errorf("%s: %v", id.Call, err)
			}
		}()
		if i%2 == 1 {
			time.Sleep(time.Duration(i) * 100 * time.Microsecond) // let some requests land first
		}
		c.End("hangup")
		wg.Wait()
		if !rep.OK && rep.Code != wire.CodeUnknown && rep.Code != wire.CodeNoCapacity {
			t.Errorf("%s: place crossing the end answered %+v", id.Call, rep)
		}
		if n.Call(id) != nil {
			t.Errorf("%s: the node still holds the ended call", id.Call)
		}
		deadline := time.Now().Add(10 * time.Second)
		for c.replacing.Load() != 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if got := c.replacing.Load(); got != 0 {
			t.Errorf("%s: %d re-placements still running after the end", id.Call, got)
		}
		var again wire.Reply
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = bus.Request(ctx, nc, subjects.IngestVerb("in-1", subjects.IngestVerbPlace), req, &again)
		cancel()
		if err != nil || again.OK || again.Code != wire.CodeUnknown {
			t.Errorf("%s: place after the end: %+v, %v; want %s", id.Call, again, err, wire.CodeUnknown)
		}
	}
	// Every leg's last frame arrived, and nothing after it.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		done := len(last) == rounds
		mu.Unlock()
		if done || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(last) != rounds {
		t.Errorf("last frames seen on %d legs, want %d", len(last), rounds)
	}
	for s, k := range after {
		t.Errorf("%s: %d frames after the last (epoch up to %d)", s, k, epochs[s])
	}
}
