package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/obs"
	"github.com/callrouter/callrouter/internal/peertest"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// fakeService behaves as the components do: Run flushes (it fails without a connection), sets
// itself ready and heartbeats on hb.<component>.<id> from its loop, unless stalled.
type fakeService struct {
	nc      bus.Conn
	h       *obs.Health
	every   time.Duration
	stalled atomic.Bool
	runs    atomic.Int32
}

func (f *fakeService) Run(ctx context.Context) error {
	f.runs.Add(1)
	if err := f.nc.Flush(); err != nil {
		return fmt.Errorf("fake: flush: %w", err)
	}
	f.h.SetLive(true)
	f.h.SetReady(true)
	t := time.NewTicker(f.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if !f.stalled.Load() {
				_ = f.nc.Publish(subjects.Heartbeat("fake", "f1"), []byte("{}"))
			}
		}
	}
}

func (f *fakeService) Mount(mux *http.ServeMux) {
	mux.HandleFunc("/app", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("app\n")) })
}

func status(addr, path string) (int, string) {
	cl := http.Client{Timeout: 2 * time.Second}
	resp, err := cl.Get("http://" + addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func waitStatus(t *testing.T, addr, path string, want int, d time.Duration) {
	t.Helper()
	var got int
	var body string
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if got, body = status(addr, path); got == want {
			return
		}
	}
	t.Fatalf("%s: %d %q after %v, want %d", path, got, body, d, want)
}

// TestStartsWithoutNATS starts a main with no server on its NATS port: it serves /healthz 200 and
// /readyz 503 (its own handlers 503 with Retry-After), runs the component once a server appears,
// turns not-ready when the server goes and ready when it is back, and fails /healthz when the
// component, connected, stops heartbeating.
func TestStartsWithoutNATS(t *testing.T) {
	natsPort, httpPort := peertest.Port(t), peertest.Port(t)
	addr := fmt.Sprintf("127.0.0.1:%d", httpPort)
	c := &Common{NATS: bus.DefaultConfig(), HTTP: addr, LogLevel: "error"}
	c.NATS.URL = fmt.Sprintf("nats://127.0.0.1:%d", natsPort)
	const every = 50 * time.Millisecond
	var svc *fakeService
	build := func(nc bus.Conn, _ zerolog.Logger, _ *prometheus.Registry, h *obs.Health) (Service, error) {
		svc = &fakeService{nc: nc, h: h, every: every}
		return svc, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	code := make(chan int, 1)
	go func() { code <- run(ctx, "fake", "f1", every, c, build, zerolog.Nop()) }()

	waitStatus(t, addr, "/healthz", 200, 10*time.Second)
	if got, _ := status(addr, "/readyz"); got != 503 {
		t.Errorf("/readyz without NATS: %d, want 503", got)
	}
	cl := http.Client{Timeout: 2 * time.Second}
	resp, err := cl.Get("http://" + addr + "/app")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("/app before NATS: %d, Retry-After %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	time.Sleep(20 * every) // longer than the liveness window: nothing to judge without NATS
	if got, body := status(addr, "/healthz"); got != 200 {
		t.Errorf("/healthz without NATS after %v: %d %q, want 200", 20*every, got, body)
	}
	if svc.runs.Load() != 0 {
		t.Error("the component ran before NATS was reached")
	}

	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: natsPort})
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(t, addr, "/readyz", 200, 15*time.Second)
	waitStatus(t, addr, "/app", 200, 5*time.Second)
	time.Sleep(20 * every)
	if got, body := status(addr, "/healthz"); got != 200 {
		t.Errorf("/healthz while heartbeating: %d %q", got, body)
	}

	svc.stalled.Store(true)
	waitStatus(t, addr, "/healthz", 503, 10*time.Second)
	svc.stalled.Store(false)
	waitStatus(t, addr, "/healthz", 200, 10*time.Second)

	srv.Close()
	waitStatus(t, addr, "/readyz", 503, 15*time.Second)
	time.Sleep(20 * every)
	if got, body := status(addr, "/healthz"); got != 200 {
		t.Errorf("/healthz while NATS is down: %d %q, want 200", got, body)
	}
	srv, err = bus.StartEmbedded(bus.EmbeddedOptions{Port: natsPort})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	waitStatus(t, addr, "/readyz", 200, 15*time.Second)
	waitStatus(t, addr, "/healthz", 200, 5*time.Second)

	cancel()
	select {
	case got := <-code:
		if got != 0 {
			t.Errorf("exit %d, want 0", got)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return after its context ended")
	}
	if n := svc.runs.Load(); n != 1 {
		t.Errorf("component ran %d times, want 1", n)
	}
}

func TestStopsCleanlyBeforeNATS(t *testing.T) {
	c := &Common{NATS: bus.DefaultConfig(), HTTP: "127.0.0.1:0", LogLevel: "error"}
	c.NATS.URL = fmt.Sprintf("nats://127.0.0.1:%d", peertest.Port(t))
	ran := false
	build := func(nc bus.Conn, _ zerolog.Logger, _ *prometheus.Registry, h *obs.Health) (Service, error) {
		return serviceFunc(func(context.Context) error { ran = true; return nil }), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if code := run(ctx, "fake", "f2", time.Second, c, build, zerolog.Nop()); code != 0 || ran {
		t.Errorf("exit %d, ran %v; want 0 and not run", code, ran)
	}
}

type serviceFunc func(context.Context) error

func (f serviceFunc) Run(ctx context.Context) error { return f(ctx) }
