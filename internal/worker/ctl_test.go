package worker_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

// goroutinesIn counts the goroutines whose stack has fn in it.
func goroutinesIn(fn string) int {
	var b bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&b, 2)
	n := 0
	for _, g := range strings.Split(b.String(), "\n\n") {
		if strings.Contains(g, fn) {
			n++
		}
	}
	return n
}

// Calls cost one goroutine each (their own), not a second one in nats.go for their control
// subscription, and control requests still reach the call that is held, are bounded in size,
// and get NATS "no responders" for a call that is not (or no longer) held.
func TestControlAddsNoGoroutinePerCall(t *testing.T) {
	wc := workerConfig()
	wc.IdleTimeout = time.Minute // the calls get no frames
	l := startLone(t, wc)
	// The first offer also starts the test connection's request inbox: before the baseline.
	if r := l.offer(t, wire.Offer{Call: spec("ctl-0"), Epoch: 1}); !r.OK {
		t.Fatalf("offer refused: %+v", r.Reply)
	}
	const n = 40
	const asyncSubs = ".(*Conn).waitForMsgs(" // nats.go's goroutine per callback subscription
	beforeSubs, before := goroutinesIn(asyncSubs), runtime.NumGoroutine()
	for i := 1; i <= n; i++ {
		if r := l.offer(t, wire.Offer{Call: spec(fmt.Sprintf("ctl-%d", i)), Epoch: 1}); !r.OK {
			t.Fatalf("offer %d refused: %+v", i, r.Reply)
		}
	}
	afterSubs, after := goroutinesIn(asyncSubs), runtime.NumGoroutine()
	if afterSubs > beforeSubs {
		t.Errorf("%d calls added %d nats.go subscription goroutines, want none", n, afterSubs-beforeSubs)
	}
	// Each call's own goroutine, and a little slack for what comes and goes (heartbeats).
	if d := after - before; d > n+5 {
		t.Errorf("%d calls added %d goroutines, want at most %d", n, d, n+5)
	}

	status, _ := json.Marshal(wire.CtlRequest{V: 1, Command: "status"})
	ctl := func(call string, data []byte) (wire.CtlReply, error) {
		t.Helper()
		m, err := l.nc.Request(subjects.Ctl("acme", call), data, 5*time.Second)
		if err != nil {
			return wire.CtlReply{}, err
		}
		var r wire.CtlReply
		if err := json.Unmarshal(m.Data, &r); err != nil {
			t.Fatalf("control reply %q: %v", m.Data, err)
		}
		return r, nil
	}
	for i := 0; i <= n; i++ {
		call := fmt.Sprintf("ctl-%d", i)
		r, err := ctl(call, status)
		if err != nil || !r.OK || r.Worker != l.id {
			t.Fatalf("status of %s: %+v, %v", call, r, err)
		}
	}
	big := append(append([]byte(`{"v":1,"command":"status","args":{"x":"`), bytes.Repeat([]byte("a"), 17<<10)...), `"}}`...)
	if r, err := ctl("ctl-1", big); err != nil || r.OK || r.Code != wire.CodeBadRequest || !strings.Contains(r.Reason, "at most") {
		t.Fatalf("oversized control request: %+v, %v", r, err)
	}
	if _, err := ctl("ctl-none", status); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("control request for a call not held: %v, want no responders", err)
	}
	if r := l.release(t, wire.Release{V: wire.V, Tenant: "acme", Call: "ctl-1", Epoch: 1}); !r.OK {
		t.Fatalf("release: %+v", r.Reply)
	}
	if _, err := ctl("ctl-1", status); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("control request for a released call: %v, want no responders", err)
	}
	if r, err := ctl("ctl-2", status); err != nil || !r.OK {
		t.Fatalf("status of ctl-2 after ctl-1 went: %+v, %v", r, err)
	}
}
