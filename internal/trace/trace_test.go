package trace_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/trace"
	"github.com/callrouter/callrouter/internal/trace/tracetest"
	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"
)

// noEnv clears the standard variables that would turn tracing on.
func noEnv(t *testing.T) {
	for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"} {
		t.Setenv(k, "")
	}
}

// TestOffIsFree: with no endpoint, Setup starts nothing (no exporter, no goroutine), spans are
// not recorded, no header is injected, and a receiver hears nothing.
func TestOffIsFree(t *testing.T) {
	noEnv(t)
	recv := tracetest.New(t)
	before := goleak.IgnoreCurrent()
	shutdown, err := trace.Setup(context.Background(), trace.Config{Service: "test"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, span := trace.Start(context.Background(), "sip.invite", trace.Server, trace.Call("acme", "c1")...)
	if trace.Recording(ctx) {
		t.Error("a span is recorded with tracing off")
	}
	if h := trace.Inject(ctx); h != nil {
		t.Errorf("headers injected with tracing off: %v", h)
	}
	trace.End(span, nil)
	goleak.VerifyNone(t, before) // no batcher, no exporter
	if err := shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := recv.Requests(); n != 0 {
		t.Errorf("%d requests reached the receiver", n)
	}
}

// TestExportAndPropagate exports two spans to a real OTLP/HTTP receiver, the second continuing
// the first through NATS headers, and checks what arrives: one trace, parented, with the call.
func TestExportAndPropagate(t *testing.T) {
	noEnv(t)
	recv := tracetest.New(t)
	shutdown, err := trace.Setup(context.Background(), trace.Config{Endpoint: recv.URL, Service: "ingest", Instance: "i1"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, parent := trace.Start(context.Background(), "ingest.place", trace.Client, trace.Call("acme", "c1")...)
	h := trace.Inject(ctx)
	if !strings.HasPrefix(h.Get("traceparent"), "00-") {
		t.Fatalf("traceparent header: %q", h.Get("traceparent"))
	}
	msg := &nats.Msg{Header: h} // what a responder reads
	_, child := trace.Start(trace.Extract(context.Background(), msg.Header), "router.place", trace.Server, trace.Call("acme", "c1")...)
	trace.End(child, nil)
	trace.End(parent, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	spans := recv.Spans()
	chain, why := tracetest.Chain(spans, "c1", "ingest.place", "router.place")
	if chain == nil {
		t.Fatalf("%s; received %+v", why, spans)
	}
	if chain[0].Service != "ingest" || chain[0].Attrs["callrouter.tenant"] != "acme" || chain[0].Parent != "" {
		t.Errorf("root span: %+v", chain[0])
	}
}

// TestEnvironmentEndpoint: the standard OTEL_EXPORTER_OTLP_ENDPOINT turns tracing on without
// the flag.
func TestEnvironmentEndpoint(t *testing.T) {
	noEnv(t)
	recv := tracetest.New(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", recv.URL)
	shutdown, err := trace.Setup(context.Background(), trace.Config{Service: "router"})
	if err != nil {
		t.Fatal(err)
	}
	_, span := trace.Start(context.Background(), "router.place", trace.Server, trace.Call("acme", "c2")...)
	span.End()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if chain, why := tracetest.Chain(recv.Spans(), "c2", "router.place"); chain == nil {
		t.Fatal(why)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		endpoint string
		ok       bool
	}{
		{"", true},
		{"http://127.0.0.1:4318", true},
		{"https://collector.example/otlp/", true},
		{"127.0.0.1:4318", false},
		{"ftp://collector", false},
		{"http://", false},
		{"::", false},
	} {
		err := trace.Config{Endpoint: tc.endpoint}.Validate()
		if (err == nil) != tc.ok || err != nil && !strings.Contains(err.Error(), "-otlp-endpoint") {
			t.Errorf("Validate(%q) = %v", tc.endpoint, err)
		}
	}
}
