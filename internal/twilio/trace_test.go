package twilio

import (
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/trace/tracetest"
	"github.com/coder/websocket"
)

// TestCallSetupTrace streams one call with tracing to a real OTLP/HTTP receiver: the start, the
// placement, the offer and the first frame at the worker are one trace, parented in that order,
// every span naming the call and its tenant, twilio.start its root.
func TestCallSetupTrace(t *testing.T) {
	recv := tracetest.Install(t, "twilio-test")
	e := startEnv(t, 0)
	c := dial(t, e.url)
	c.start(tokenAcme, "inbound")
	in := tone(10*160, 440)
	for k := 1; k <= 10; k++ {
		c.media("inbound", k, in[(k-1)*160:k*160])
	}
	call := subjects.Encode("tw-" + c.sid)
	var chain []tracetest.Span
	why := ""
	eventually(t, 15*time.Second, "the call's setup spans at the receiver", func() bool {
		chain, why = tracetest.Chain(recv.Spans(), call, "twilio.start", "ingest.place", "router.place", "router.offer", "worker.offer", "worker.first_frame")
		return chain != nil
	})
	if chain == nil {
		t.Fatal(why)
	}
	c.send(map[string]any{"event": "stop", "stop": map[string]any{"accountSid": "AC0123", "callSid": "CA0123"}})
	if code, _ := c.closed(); code != websocket.StatusNormalClosure {
		t.Fatalf("close %v, want 1000", code)
	}
	for _, s := range chain {
		if s.Failed || s.Attrs["callrouter.tenant"] != "acme" {
			t.Errorf("span %s: %+v", s.Name, s)
		}
	}
	if chain[0].Parent != "" {
		t.Errorf("twilio.start has a parent: %+v", chain[0])
	}
}
