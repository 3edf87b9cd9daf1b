// Package trace is callrouter's OpenTelemetry tracing of call setup: the tracer provider built
// from an OTLP/HTTP endpoint (none configured: the global no-op provider, no exporter, no
// goroutine), the spans' call attributes, and the W3C trace context carried in NATS message
// headers from ingest to router to worker. Only call setup is traced; no frame is.
// docs/operations.md ("Traces") lists the spans.
package trace

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	oteltrace "go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Scope is the instrumentation scope of every span callrouter makes.
const Scope = "github.com/callrouter/callrouter"

// Attribute keys every call setup span carries.
const (
	KeyTenant = "callrouter.tenant"
	KeyCall   = "callrouter.call"
	KeyEpoch  = "callrouter.epoch"
)

// Config says where spans go. With no Endpoint (and no OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT in the environment) tracing is off.
type Config struct {
	Endpoint string // OTLP/HTTP base URL (flag -otlp-endpoint), e.g. http://collector:4318; /v1/traces is appended
	Service  string // service.name: the component (ingest, router, worker, callrouter)
	Instance string // service.instance.id: the component's id
}

// Validate checks the endpoint; its errors name the flag.
func (c Config) Validate() error {
	if c.Endpoint == "" {
		return nil
	}
	_, err := tracesURL(c.Endpoint)
	return err
}

// tracesURL turns a base endpoint into the URL spans are posted to.
func tracesURL(base string) (string, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("flag -otlp-endpoint: %q is not an http:// or https:// URL with a host", base)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/v1/traces"
	return u.String(), nil
}

// enabled reports whether cfg or the standard environment names an endpoint.
func (c Config) enabled() bool {
	if strings.EqualFold(os.Getenv("OTEL_SDK_DISABLED"), "true") {
		return false
	}
	return c.Endpoint != "" || os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// Setup installs the global tracer provider: batched OTLP/HTTP export when an endpoint is
// configured, nothing at all otherwise (the global provider stays the no-op one). The returned
// shutdown flushes what is batched; call it once, with a fresh context, on the way out.
// Sampling follows the standard OTEL_TRACES_SAMPLER variables (default: every call).
func Setup(ctx context.Context, cfg Config) (shutdown func(context.Context) error, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if !cfg.enabled() {
		return func(context.Context) error { return nil }, nil
	}
	var opts []otlptracehttp.Option
	if cfg.Endpoint != "" {
		u, _ := tracesURL(cfg.Endpoint)
		opts = append(opts, otlptracehttp.WithEndpointURL(u))
	}
	opts = append(opts, otlptracehttp.WithTimeout(5*time.Second))
	exp, err := otlptracehttp.New(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("trace: OTLP exporter: %w", err)
	}
	res, err := resource.Merge(resource.Environment(), resource.NewSchemaless(
		attribute.String("service.name", cfg.Service), attribute.String("service.instance.id", cfg.Instance)))
	if err != nil {
		res = resource.NewSchemaless(attribute.String("service.name", cfg.Service))
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(time.Second)), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	return func(ctx context.Context) error {
		err := tp.Shutdown(ctx)
		otel.SetTracerProvider(noop.NewTracerProvider())
		return err
	}, nil
}

// Start starts a span under whatever span ctx holds, with the call's attributes when given.
// With tracing off it returns ctx and a no-op span.
func Start(ctx context.Context, name string, kind oteltrace.SpanKind, attrs ...attribute.KeyValue) (context.Context, oteltrace.Span) {
	return otel.Tracer(Scope).Start(ctx, name, oteltrace.WithSpanKind(kind), oteltrace.WithAttributes(attrs...))
}

// Span kinds, so callers need not import the OpenTelemetry API.
const (
	Server   = oteltrace.SpanKindServer
	Client   = oteltrace.SpanKindClient
	Internal = oteltrace.SpanKindInternal
)

// Call returns the attributes naming a call.
func Call(tenant, call string) []attribute.KeyValue {
	return []attribute.KeyValue{attribute.String(KeyTenant, tenant), attribute.String(KeyCall, call)}
}

// Epoch returns the attribute naming a placement's epoch.
func Epoch(e uint32) attribute.KeyValue { return attribute.Int64(KeyEpoch, int64(e)) }

// String returns a string attribute.
func String(k, v string) attribute.KeyValue { return attribute.String(k, v) }

// SetCall names the call on a span started before the call was known.
func SetCall(span oteltrace.Span, tenant, call string) { span.SetAttributes(Call(tenant, call)...) }

// End ends span, marking it failed with err's text when err is not nil.
func End(span oteltrace.Span, err error) {
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// Fail marks span failed with a reason (a SIP or HTTP refusal that is not a Go error).
func Fail(span oteltrace.Span, reason string) { span.SetStatus(codes.Error, reason) }

// Recording reports whether ctx holds a span that is recorded (tracing on and sampled): only then
// is there a trace context worth carrying or a span worth keeping for later.
func Recording(ctx context.Context) bool { return oteltrace.SpanFromContext(ctx).IsRecording() }

// Annotate adds attributes to the span ctx holds (a no-op span with tracing off).
func Annotate(ctx context.Context, attrs ...attribute.KeyValue) {
	oteltrace.SpanFromContext(ctx).SetAttributes(attrs...)
}

// Span is an OpenTelemetry span.
type Span = oteltrace.Span
