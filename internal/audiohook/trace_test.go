package audiohook

import (
	"bytes"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/trace/tracetest"
)

// TestCallSetupTrace opens one session with tracing to a real OTLP/HTTP receiver: the open, the
// placement, the offer and the first frame at the worker are one trace, parented in that order,
// every span naming the call and its tenant, audiohook.open its root.
func TestCallSetupTrace(t *testing.T) {
	recv := tracetest.Install(t, "audiohook-test")
	e := startEnv(t, testConfig(t), envOpts{workers: 1})
	c, err := e.dial(t, signOpts{})
	if err != nil {
		t.Fatal(err)
	}
	c.mustOpen()
	c.audio(bytes.Repeat([]byte{0xff}, 3200)) // 200 ms of stereo silence
	call := callFor(c.id)
	var chain []tracetest.Span
	why := ""
	eventually(t, 15*time.Second, "the call's setup spans at the receiver", func() bool {
		chain, why = tracetest.Chain(recv.Spans(), call, "audiohook.open", "ingest.place", "router.place", "router.offer", "worker.offer", "worker.first_frame")
		return chain != nil
	})
	if chain == nil {
		t.Fatal(why)
	}
	c.closeSession(200 * time.Millisecond)
	for _, s := range chain {
		if s.Failed || s.Attrs["callrouter.tenant"] != "acme" {
			t.Errorf("span %s: %+v", s.Name, s)
		}
	}
	if chain[0].Parent != "" {
		t.Errorf("audiohook.open has a parent: %+v", chain[0])
	}
}
