package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/obs"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// mounted is a service that serves one extra path.
type mounted struct {
	Service
	path string
}

func (m mounted) Mount(mux *http.ServeMux) {
	mux.HandleFunc(m.path, func(http.ResponseWriter, *http.Request) {})
}

// check parses args like a main and runs Check with build.
func check(t *testing.T, args []string, build Build) (code int, out Checked, stderr string) {
	t.Helper()
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	c := CommonFlags(fs, ":8082")
	fs.Duration("drain-timeout", 0, "")
	if err := Parse(fs, args); err != nil {
		t.Fatal(err)
	}
	var o, e bytes.Buffer
	code = Check("x", "x-1", c, build, zerolog.Nop(), &o, &e)
	if code == 0 {
		if err := json.Unmarshal(o.Bytes(), &out); err != nil {
			t.Fatalf("output %q: %v", o.String(), err)
		}
	}
	return code, out, e.String()
}

func okBuild(nc bus.Conn, _ zerolog.Logger, _ *prometheus.Registry, _ *obs.Health) (Service, error) {
	if nc != nil {
		return nil, errors.New("a connection was made")
	}
	return mounted{path: "/whip"}, nil
}

func TestCheckPrintsWhatWouldBeServed(t *testing.T) {
	t.Setenv("CALLROUTER_DRAIN_TIMEOUT", "25s")
	// Nothing listens on port 1: connecting would fail, so success shows no connection was tried.
	code, got, stderr := check(t, []string{"-check-config", "-http", ":9000", "-nats", "nats://worker:s3cret@127.0.0.1:1,nats://127.0.0.1:2"}, okBuild)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if got.Component != "x" || got.ID != "x-1" || got.HTTP != ":9000" {
		t.Errorf("got %+v", got)
	}
	if diff := cmp.Diff([]string{"/healthz", "/readyz", "/metrics"}, got.Paths); diff != "" {
		t.Errorf("paths (-want +got):\n%s", diff)
	}
	if got.Flags["drain-timeout"] != "25s" || got.Flags["log-level"] != "info" || got.Flags["check-config"] != "true" {
		t.Errorf("flags %v: want the environment's and the defaults' values", got.Flags)
	}
	if n := got.Flags["nats"]; strings.Contains(n, "s3cret") || !strings.Contains(n, "worker:xxxxx@127.0.0.1:1") || !strings.HasSuffix(n, ",nats://127.0.0.1:2") {
		t.Errorf("nats %q: want the password redacted and the URLs kept", n)
	}
}

func TestCheckNamesTheBadFlag(t *testing.T) {
	creds := filepath.Join(t.TempDir(), "nats.creds")
	if err := os.WriteFile(creds, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args  []string
		build Build
		want  string
	}{
		{[]string{"-http", "8080"}, okBuild, "flag -http"},
		{[]string{"-http", ":http-port"}, okBuild, "flag -http"},
		{[]string{"-nats", " "}, okBuild, "flag -nats"},
		{[]string{"-nats", "http://127.0.0.1:4222"}, okBuild, "flag -nats"},
		{[]string{"-nats-creds", filepath.Join(t.TempDir(), "missing.creds")}, okBuild, "flag -nats-creds"},
		{[]string{"-nats-tls-cert", creds}, okBuild, "-nats-tls-key"},
		{[]string{"-nats-reconnect-buf", "0"}, okBuild, "flag -nats-reconnect-buf"},
		{nil, func(bus.Conn, zerolog.Logger, *prometheus.Registry, *obs.Health) (Service, error) {
			return nil, errors.New("worker: capacity 0 must be at least 1")
		}, "bad configuration: worker: capacity 0"},
		{nil, func(bus.Conn, zerolog.Logger, *prometheus.Registry, *obs.Health) (Service, error) {
			return mounted{path: "/metrics"}, nil
		}, "HTTP handlers conflict"},
	} {
		code, _, stderr := check(t, tc.args, tc.build)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want 2 and %q", tc.args, code, stderr, tc.want)
		}
	}
	if code, _, stderr := check(t, []string{"-nats-creds", creds}, okBuild); code != 0 {
		t.Errorf("a readable creds file: exit %d, %s", code, stderr)
	}
}
