package inproc

import (
	"context"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/loadtest"
	"github.com/nats-io/nats.go"
)

// TestSecureStack runs the baseline and callrouter phases on a stack as in production (TLS, every
// component and the tester under its own identity): nothing is lost, and the server really asks
// for both: a plain connection is refused, and the tester's identity may not touch callrouter's
// control plane.
func TestSecureStack(t *testing.T) {
	cfg := shortConfig(t, loadtest.ModeInproc, "lt-secure", 4, 50, time.Second)
	cfg.Baseline = true
	cfg.Secure = true
	rep := run(t, cfg, loadtest.Deps{Harness: Start, Log: testLog(t), StackLog: testLog(t)})
	for _, p := range rep.Phases {
		if p.Totals.Sent == 0 || p.Totals.Received != p.Totals.Sent || p.LossRatio != 0 {
			t.Errorf("%s: sent %d, received %d, loss %v", p.Name, p.Totals.Sent, p.Totals.Received, p.LossRatio)
		}
	}
	if !rep.Pass {
		t.Errorf("failures: %v", rep.Failures)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := Start(ctx, loadtest.LocalConfig{Mode: loadtest.ModeInproc, Tenant: "lt-secure", Calls: 1, Legs: 2, Workers: 1, Secure: true, Log: testLog(t), StackLog: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if nc, err := nats.Connect(l.URL, nats.Timeout(5*time.Second)); err == nil {
		nc.Close()
		t.Error("a connection without TLS or credentials was accepted")
	}
	denied := make(chan error, 4)
	nc, err := nats.Connect(l.URL, append(l.Options, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { denied <- err }))...)
	if err != nil {
		t.Fatalf("the tester's own identity: %v", err)
	}
	defer nc.Close()
	if err := nc.Publish(subjects.Place, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	select {
	case err := <-denied:
		t.Logf("placement request as the tester: %v", err)
	case <-time.After(10 * time.Second):
		t.Error("the tester's identity published a placement request without a permissions violation")
	}
}
