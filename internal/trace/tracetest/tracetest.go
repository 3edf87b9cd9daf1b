// Package tracetest is an OTLP/HTTP trace receiver for tests: an httptest server that decodes
// the ExportTraceServiceRequest protobufs exporters post to /v1/traces and keeps their spans,
// and a check that a call's setup spans form one chain in one trace.
package tracetest

import (
	"compress/gzip"
	"context"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/trace"
	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// Span is one received span, flattened.
type Span struct {
	Service string // the resource's service.name
	Name    string
	Trace   string // hex trace id
	ID      string // hex span id
	Parent  string // hex parent span id; empty for a root
	Kind    tracepb.Span_SpanKind
	Attrs   map[string]string // string and integer attributes, as text
	Failed  bool              // status error
}

// Receiver is a running OTLP/HTTP receiver; URL is its base (what -otlp-endpoint takes).
type Receiver struct {
	URL string

	srv      *httptest.Server
	mu       sync.Mutex
	spans    []Span
	requests int
}

// New starts a receiver on loopback, closed when the test ends.
func New(t testing.TB) *Receiver {
	r := &Receiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	r.URL = r.srv.URL
	t.Cleanup(r.srv.Close)
	return r
}

func (r *Receiver) serve(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	r.requests++
	r.mu.Unlock()
	if req.Method != http.MethodPost || req.URL.Path != "/v1/traces" {
		http.Error(w, "not an OTLP trace export", http.StatusNotFound)
		return
	}
	var body io.Reader = req.Body
	if req.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(req.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	data, err := io.ReadAll(io.LimitReader(body, 16<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var ex coltrace.ExportTraceServiceRequest
	if err := proto.Unmarshal(data, &ex); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.add(&ex)
	out, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

func (r *Receiver) add(ex *coltrace.ExportTraceServiceRequest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range ex.GetResourceSpans() {
		service := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				s := Span{Service: service, Name: sp.GetName(), Trace: hex.EncodeToString(sp.GetTraceId()), ID: hex.EncodeToString(sp.GetSpanId()),
					Parent: hex.EncodeToString(sp.GetParentSpanId()), Kind: sp.GetKind(), Attrs: map[string]string{},
					Failed: sp.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR}
				for _, kv := range sp.GetAttributes() {
					switch v := kv.GetValue().GetValue().(type) {
					case *commonpb.AnyValue_StringValue:
						s.Attrs[kv.GetKey()] = v.StringValue
					case *commonpb.AnyValue_IntValue:
						s.Attrs[kv.GetKey()] = strconv.FormatInt(v.IntValue, 10)
					}
				}
				r.spans = append(r.spans, s)
			}
		}
	}
}

// Spans returns the spans received so far.
func (r *Receiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Span(nil), r.spans...)
}

// Requests returns how many HTTP requests reached the receiver.
func (r *Receiver) Requests() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.requests
}

// Chain finds, among spans, a chain of the named spans in one trace, each the parent of the
// next, the first naming the call (attribute callrouter.call) and every one carrying that
// attribute. It returns the chain, or nil and what is missing.
func Chain(spans []Span, call string, names ...string) ([]Span, string) {
	var walk func(prev Span, rest []string) []Span
	walk = func(prev Span, rest []string) []Span {
		if len(rest) == 0 {
			return []Span{}
		}
		for _, s := range spans {
			if s.Name == rest[0] && s.Trace == prev.Trace && s.Parent == prev.ID && s.Attrs["callrouter.call"] == call {
				if tail := walk(s, rest[1:]); tail != nil {
					return append([]Span{s}, tail...)
				}
			}
		}
		return nil
	}
	why := "no " + names[0] + " span for call " + call
	for _, root := range spans {
		if root.Name != names[0] || root.Attrs["callrouter.call"] != call {
			continue
		}
		if tail := walk(root, names[1:]); tail != nil {
			return append([]Span{root}, tail...), ""
		}
		why = "the " + names[0] + " span of call " + call + " has no chain " + strings.Join(names, " → ")
	}
	return nil, why
}

// Install points this process's tracing at a new receiver for the test (the OTEL_* environment
// cleared, so only the receiver counts) and flushes and shuts tracing down when the test ends.
func Install(t testing.TB, service string) *Receiver {
	t.Helper()
	for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"} {
		t.Setenv(k, "")
	}
	recv := New(t)
	shutdown, err := trace.Setup(context.Background(), trace.Config{Endpoint: recv.URL, Service: service})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = shutdown(ctx)
	})
	return recv
}
