package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestAudioHookFlags(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "keys")
	if err := os.WriteFile(good, []byte("# tenant key secret\nacme SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("acme short not-base64\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tw := filepath.Join(dir, "twilio")
	if err := os.WriteFile(tw, []byte("acme acme-token-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"-check-config", "-nats", "nats://127.0.0.1:1"}
	if code := run(append(base, "-audiohook-key-file", good, "-twilio-token-file", tw)); code != 0 {
		t.Errorf("both: exit %d, want 0", code)
	}
	if code := run(append(base, "-audiohook-key-file", good)); code != 0 {
		t.Errorf("good key file: exit %d, want 0", code)
	}
	for _, args := range [][]string{{"-audiohook-key-file", bad}, {"-audiohook-key-file", filepath.Join(dir, "missing")},
		{"-audiohook-key-file", good, "-audiohook-max-ahead", "0s"}, {"-audiohook-key-file", good, "-audiohook-path", "ws"},
		{"-twilio-token-file", bad}, {"-twilio-token-file", tw, "-twilio-reorder-window", "2s"},
		{"-twilio-token-file", tw, "-twilio-place-timeout", "0s"}} {
		if code := run(append(base, args...)); code != 2 {
			t.Errorf("run(%q) = %d, want 2", args, code)
		}
	}
}
