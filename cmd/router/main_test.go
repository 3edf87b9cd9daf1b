package main

import "testing"

func TestBadFlagsStopWithUsageError(t *testing.T) {
	for _, args := range [][]string{{"-nope"}, {"-id", "a.b"}, {"-heartbeat", "0s"}, {"-move-offer-timeout", "0s"}, {"-http", ":1", "stray"}} {
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
