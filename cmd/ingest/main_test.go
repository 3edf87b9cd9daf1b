package main

import (
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/obs"
)

func TestBadFlagsStopWithUsageError(t *testing.T) {
	for _, args := range [][]string{{"-nope"}, {"-id", "a.b"}, {"-heartbeat", "0s"}, {"-http", ":1", "stray"}} {
		if code := run(args); code != 2 {
			t.Errorf("run(%q) = %d, want 2", args, code)
		}
	}
}

func TestCheckConfigConnectsToNothing(t *testing.T) {
	// Nothing listens on port 1, so a run that tried to connect would exit 1.
	base := []string{"-check-config", "-nats", "nats://127.0.0.1:1"}
	for _, ok := range [][]string{base, append(base, "-nats-publish-conns", "4")} {
		if code := run(ok); code != 0 {
			t.Errorf("run(%q) = %d, want 0", ok, code)
		}
	}
	for _, bad := range [][]string{{"-http", "8080"}, {"-heartbeat", "0s"}, {"-log-level", "loud"}} {
		if code := run(append(base, bad...)); code != 2 {
			t.Errorf("run(%q) = %d, want 2", append(base, bad...), code)
		}
	}
}

// TestWHIPListenerFlags: the public listener's flags are checked before anything runs, and it
// may not share the -http address (where /metrics is).
func TestWHIPListenerFlags(t *testing.T) {
	base := []string{"-check-config", "-nats", "nats://127.0.0.1:1"}
	if code := run(append(base, "-whip-listen", "127.0.0.1:8443", "-http", "127.0.0.1:8080")); code != 0 {
		t.Errorf("separate listeners: exit %d, want 0", code)
	}
	for _, bad := range [][]string{
		{"-whip-listen", "8443"},
		{"-whip-listen", ":8080", "-http", ":8080"},
		{"-whip-tls-cert", "/nonexistent.pem"},
		{"-whip-tls-cert", "/nonexistent.pem", "-whip-tls-key", "/nonexistent.key"},
		{"-whip-max-conns", "-1"},
		{"-whip-write-timeout", "-1s"},
	} {
		if code := run(append(base, bad...)); code != 2 {
			t.Errorf("run(%q) = %d, want 2", bad, code)
		}
	}
}

// freePort returns a TCP port free on 127.0.0.1 a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestWHIPOnItsOwnListener runs the binary against a real NATS server: the call page and WHIP
// answer on -whip-listen only, /metrics and the probes on -http only; SIGTERM stops it cleanly.
func TestWHIPOnItsOwnListener(t *testing.T) {
	ns, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	private, public := freePort(t), freePort(t)
	dir := t.TempDir()
	ahKeys, twTokens := filepath.Join(dir, "audiohook"), filepath.Join(dir, "twilio")
	if err := os.WriteFile(ahKeys, []byte("demo key-0123456789abcdef c2VjcmV0LXNlY3JldC1zZWNyZXQ=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(twTokens, []byte("demo token-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan int, 1)
	go func() {
		done <- run([]string{"-id", "ing-test", "-nats", ns.URL(), "-http", private, "-whip-listen", public,
			"-whip-udp", "127.0.0.1:0", "-whip-open-tenant", "demo", "-log-level", "error",
			"-audiohook-key-file", ahKeys, "-twilio-token-file", twTokens})
	}()
	status := func(url string) int {
		res, err := http.Get(url)
		if err != nil {
			return 0
		}
		res.Body.Close()
		return res.StatusCode
	}
	for deadline := time.Now().Add(20 * time.Second); status("http://"+public+"/call/") != http.StatusOK; time.Sleep(50 * time.Millisecond) {
		select {
		case code := <-done:
			t.Fatalf("ingest exited %d before serving the call page", code)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the call page is not served on -whip-listen")
		}
	}
	for _, p := range obs.Paths() {
		if code := status("http://" + public + p); code != http.StatusNotFound {
			t.Errorf("-whip-listen %s: %d, want 404", p, code)
		}
		if code := status("http://" + private + p); code != http.StatusOK {
			t.Errorf("-http %s: %d, want 200", p, code)
		}
	}
	for _, p := range []string{"/call/", "/whip", "/api/v1/audiohook/ws", "/twilio/media", "/debug/pprof/"} { // no -pprof: no profiles
		if code := status("http://" + private + p); code != http.StatusNotFound {
			t.Errorf("-http %s: %d, want 404", p, code)
		}
	}
	// The WebSocket streams share the public listener: a plain GET is refused by their handlers
	// (no upgrade, no signature), not left unrouted.
	for _, p := range []string{"/api/v1/audiohook/ws", "/twilio/media"} {
		if code := status("http://" + public + p); code == 0 || code == http.StatusNotFound {
			t.Errorf("-whip-listen %s: %d, want the stream's own refusal", p, code)
		}
	}
	// cli.Main has its SIGTERM handler in place: it runs, and serves.
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d after SIGTERM", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("ingest did not stop after SIGTERM")
	}
}

// TestPprofOnlyOnHTTP: with -pprof the runtime profiles answer under /debug/pprof/ on -http,
// never on the public -whip-listen.
func TestPprofOnlyOnHTTP(t *testing.T) {
	ns, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	private, public := freePort(t), freePort(t)
	done := make(chan int, 1)
	go func() {
		done <- run([]string{"-id", "ing-pprof", "-nats", ns.URL(), "-http", private, "-whip-listen", public,
			"-whip-udp", "127.0.0.1:0", "-whip-open-tenant", "demo", "-log-level", "error", "-pprof"})
	}()
	get := func(url string) (int, string) {
		res, err := http.Get(url)
		if err != nil {
			return 0, ""
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
		return res.StatusCode, string(body)
	}
	goroutines := "http://" + private + "/debug/pprof/goroutine?debug=1"
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		code, body := get(goroutines)
		if code == http.StatusOK && strings.Contains(body, "goroutine profile:") {
			break
		}
		select {
		case code := <-done:
			t.Fatalf("ingest exited %d before serving profiles", code)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("-pprof: %s answers %d, want the goroutine profile", goroutines, code)
		}
	}
	if code, body := get("http://" + private + "/debug/pprof/"); code != http.StatusOK || !strings.Contains(body, "heap") {
		t.Errorf("-http /debug/pprof/: %d, want the index", code)
	}
	for _, p := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1"} {
		if code, _ := get("http://" + public + p); code != http.StatusNotFound {
			t.Errorf("-whip-listen %s: %d, want 404", p, code)
		}
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d after SIGTERM", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("ingest did not stop after SIGTERM")
	}
}
