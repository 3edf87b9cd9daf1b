package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/wav"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// TestRemoteNATSWithCredentials: a baseline run against a NATS that requires an nkey signs in
// with -nats-nkey and passes; without it the run fails with an error naming the flags that would
// sign it in.
func TestRemoteNATSWithCredentials(t *testing.T) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	dir := t.TempDir()
	seedFile := filepath.Join(dir, "tester.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1, Users: []*server.NkeyUser{{Nkey: pub}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	in := filepath.Join(dir, "short.wav")
	f, err := os.Create(in)
	if err != nil {
		t.Fatal(err)
	}
	if err := wav.Write(f, wav.FormatMuLaw, 8000, 8, [][]byte{bytes.Repeat([]byte{0xFF}, 1600)}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	args := []string{"-mode", "baseline", "-nats", srv.URL(), "-input", in, "-calls", "2", "-quiet", "-max-loss", "0", "-settle", "2s"}

	var out, errOut bytes.Buffer
	if code := run(append(args, "-nats-nkey", seedFile), &out, &errOut); code != 0 {
		t.Fatalf("with -nats-nkey: exit %d, want 0\nstdout:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
	}
	errOut.Reset()
	if code := run(args, io.Discard, &errOut); code != 2 || !strings.Contains(errOut.String(), "-nats-nkey") ||
		!strings.Contains(strings.ToLower(errOut.String()), "authorization") {
		t.Errorf("without credentials: exit %d, stderr %q; want 2 and an authorization error naming -nats-nkey", code, errOut.String())
	}
}

// TestNATSCredentialFlagsAreChecked: the credential flags name themselves when wrong, and need
// a remote -nats.
func TestNATSCredentialFlagsAreChecked(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.nk")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-nats-nkey", missing}, "need -nats"},
		{[]string{"-nats", "nats://127.0.0.1:4222", "-nats-nkey", missing}, "flag -nats-nkey"},
		{[]string{"-nats", "nats://127.0.0.1:4222", "-nats-creds", missing}, "flag -nats-creds"},
		{[]string{"-nats", "nats://127.0.0.1:4222", "-nats-tls-cert", missing}, "-nats-tls-key"},
	} {
		_, err := parse(append([]string{"-input", "a.wav", "-mode", "baseline"}, tc.args...), io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v; want an error naming %q", tc.args, err, tc.want)
		}
	}
	t.Setenv("CALLROUTER_LOADTEST_NATS_NKEY", missing)
	if _, err := parse([]string{"-input", "a.wav", "-mode", "baseline", "-nats", "nats://127.0.0.1:4222"}, io.Discard); err == nil ||
		!strings.Contains(err.Error(), "flag -nats-nkey") {
		t.Errorf("CALLROUTER_LOADTEST_NATS_NKEY of a missing file: %v", err)
	}
}
