package whip

import (
	"context"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/trace/tracetest"
)

// TestCallSetupTrace places one WHIP call on a stack (embedded NATS, ingest, router and worker
// on their own connections) with tracing to a real OTLP/HTTP receiver: the POST, the placement,
// the offer and the first frame at the worker are one trace, parented in that order, every span
// naming the call and its tenant.
func TestCallSetupTrace(t *testing.T) {
	recv := tracetest.Install(t, "whip-test")
	e := startEnv(t, 1, testConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dial(ctx, e.url, tokenAcme, "pcmu")
	if err != nil {
		t.Fatal(err)
	}
	payloads := pcmuFrames(t, "testdata/speech-pcmu.wav")[:10]
	if err := c.send(ctx, payloads); err != nil {
		t.Fatal(err)
	}
	var chain []tracetest.Span
	why := ""
	eventually(t, 15*time.Second, "the call's setup spans at the receiver", func() bool {
		chain, why = tracetest.Chain(recv.Spans(), c.call, "whip.create", "ingest.place", "router.place", "router.offer", "worker.offer", "worker.first_frame")
		return chain != nil
	})
	if chain == nil {
		t.Fatal(why)
	}
	if code, err := c.hangup(); err != nil || code != 200 {
		t.Fatalf("DELETE: %d %v", code, err)
	}
	for _, s := range chain {
		if s.Failed || s.Attrs["callrouter.tenant"] != "acme" {
			t.Errorf("span %s: %+v", s.Name, s)
		}
	}
	if chain[0].Parent != "" {
		t.Errorf("whip.create has a parent: %+v", chain[0])
	}
}
