package sip

import (
	"strconv"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/trace/tracetest"
	"github.com/nats-io/nats.go"
)

// setupChain is a call's setup as spans, each the parent of the next.
var setupChain = []string{"sip.invite", "ingest.place", "router.place", "router.offer", "worker.offer", "worker.first_frame"}

// TestCallSetupTrace places one SIP call on a stack (embedded NATS, ingest, router and worker on
// their own connections) with tracing to a real OTLP/HTTP receiver: the INVITE, the placement,
// the offer and the first frame at the worker are one trace, parented in that order, every span
// naming the call and its tenant.
func TestCallSetupTrace(t *testing.T) {
	recv := tracetest.Install(t, "sip-test")
	e := startEnv(t, 1, nil)
	u := newUAC(t, e.addr)
	id := newCallID("trace")
	res := u.invite(id, "")
	if codeOf(res) != "200" {
		t.Fatalf("call: %s", res)
	}
	port, _ := strconv.Atoi(mPortRe.FindStringSubmatch(res)[1])
	sendRTP(t, u.rtp, port, 10, 100, 0)
	call := subjects.Encode(id)
	var chain []tracetest.Span
	why := ""
	eventually(t, 15*time.Second, "the call's setup spans at the receiver", func() bool {
		chain, why = tracetest.Chain(recv.Spans(), call, setupChain...)
		return chain != nil
	})
	if chain == nil {
		t.Fatal(why)
	}
	root := chain[0]
	if root.Parent != "" || root.Attrs["callrouter.tenant"] == "" || root.Attrs["sip.transport"] != "UDP" {
		t.Errorf("root span: %+v", root)
	}
	for _, s := range chain {
		if s.Failed || s.Attrs["callrouter.tenant"] != root.Attrs["callrouter.tenant"] {
			t.Errorf("span %s: %+v", s.Name, s)
		}
	}
	if chain[4].Attrs["callrouter.worker"] == "" || chain[3].Attrs["callrouter.worker"] != chain[4].Attrs["callrouter.worker"] {
		t.Errorf("offer spans name different workers: %+v, %+v", chain[3], chain[4])
	}
}

// TestNoTraceHeadersWhenOff: with tracing off (no endpoint), a placement request goes out with
// no headers at all, as before tracing existed.
func TestNoTraceHeadersWhenOff(t *testing.T) {
	for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"} {
		t.Setenv(k, "")
	}
	e := startEnv(t, 1, nil)
	nc, err := nats.Connect(e.st.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sub, err := nc.SubscribeSync(subjects.Place)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	u := newUAC(t, e.addr)
	if res := u.invite(newCallID("untraced"), ""); codeOf(res) != "200" {
		t.Fatalf("call: %s", res)
	}
	m, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Header) != 0 {
		t.Errorf("place request headers with tracing off: %v", m.Header)
	}
}
