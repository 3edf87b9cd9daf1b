package main

import "testing"

func TestBadFlagsStopWithUsageError(t *testing.T) {
	for _, args := range [][]string{{"-nope"}, {"-id", "a.b"}, {"-heartbeat", "0s"}, {"-http", ":1", "stray"}} {
		if code := run(args); code != 2 {
			t.Errorf("run(%q) = %d, want 2", args, code)
		}
	}
}
