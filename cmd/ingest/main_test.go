package main

import "testing"

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
	if code := run(base); code != 0 {
		t.Errorf("run(%q) = %d, want 0", base, code)
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
