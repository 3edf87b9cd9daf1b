package trace

import (
	"context"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/propagation"
	oteltrace "go.opentelemetry.io/otel/trace"
)

// propagator writes and reads the W3C traceparent and tracestate headers.
var propagator = propagation.TraceContext{}

// Header is a nats.Header as an OpenTelemetry carrier.
type Header nats.Header

// Get implements propagation.TextMapCarrier.
func (h Header) Get(key string) string { return nats.Header(h).Get(key) }

// Set implements propagation.TextMapCarrier.
func (h Header) Set(key, value string) { nats.Header(h).Set(key, value) }

// Keys implements propagation.TextMapCarrier.
func (h Header) Keys() []string {
	out := make([]string, 0, len(h))
	for k := range h {
		out = append(out, k)
	}
	return out
}

// Inject returns headers carrying the trace context of ctx's span, or nil when ctx holds no
// valid span (tracing off): then a message goes out exactly as without tracing.
func Inject(ctx context.Context) nats.Header {
	if !oteltrace.SpanContextFromContext(ctx).IsValid() {
		return nil
	}
	h := nats.Header{}
	propagator.Inject(ctx, Header(h))
	return h
}

// Extract returns ctx with the remote span context a message's headers carry, if any.
func Extract(ctx context.Context, h nats.Header) context.Context {
	if len(h) == 0 {
		return ctx
	}
	return propagator.Extract(ctx, Header(h))
}
