package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/wav"
)

func TestParseEnvAndFlags(t *testing.T) {
	t.Setenv("CALLROUTER_LOADTEST_CALLS", "7")
	t.Setenv("CALLROUTER_LOADTEST_CALL_DURATION", "3s")
	t.Setenv("CALLROUTER_LOADTEST_RAMP", "5")
	o, err := parse([]string{"-input", "a.wav,b.pcap", "-ramp", "9", "-baseline", "-max-loss", "0"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	c := o.cfg
	if c.Calls != 7 || c.CallDuration != 3*time.Second || c.Ramp != 9 || !c.Baseline || c.MaxLoss != 0 || len(c.Inputs) != 2 {
		t.Errorf("config %+v: want calls 7 and 3s from the environment, ramp 9 from the flag, 2 inputs", c)
	}
}

func TestParseErrorsNameTheFlag(t *testing.T) {
	t.Setenv("CALLROUTER_LOADTEST_SPEED", "fast")
	_, err := parse([]string{"-input", "a.wav"}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "CALLROUTER_LOADTEST_SPEED") || !strings.Contains(err.Error(), "-speed") {
		t.Errorf("bad env: %v", err)
	}
	os.Unsetenv("CALLROUTER_LOADTEST_SPEED")
	var usage bytes.Buffer
	if _, err := parse([]string{"-calls", "x"}, &usage); err == nil || !strings.Contains(usage.String(), "-calls") {
		t.Errorf("bad flag: %v, %q", err, usage.String())
	}
	_, err = parse([]string{"-input", "a.wav", "-calls", "0", "-max-p99-ratio", "2"}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "calls 0") || !strings.Contains(err.Error(), "max-p99-ratio") {
		t.Errorf("invalid values: %v", err)
	}
}

func TestRunExitCodes(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "short.wav")
	f, err := os.Create(in)
	if err != nil {
		t.Fatal(err)
	}
	if err := wav.Write(f, wav.FormatMuLaw, 8000, 8, [][]byte{bytes.Repeat([]byte{0xFF}, 1600), bytes.Repeat([]byte{0xFF}, 1600)}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	js, page := filepath.Join(dir, "r.json"), filepath.Join(dir, "r.html")
	var out bytes.Buffer
	code := run([]string{"-input", in, "-calls", "2", "-quiet", "-max-p99", "1ns", "-json", js, "-html", page}, &out, &bytes.Buffer{})
	if code != 1 || !strings.Contains(out.String(), "FAIL") {
		t.Errorf("p99 over 1ns: exit %d, want 1; output:\n%s", code, out.String())
	}
	for _, p := range []string{js, page} {
		if st, err := os.Stat(p); err != nil || st.Size() == 0 {
			t.Errorf("%s not written: %v", p, err)
		}
	}
	if code := run([]string{"-input", in, "-calls", "2", "-quiet", "-max-loss", "0"}, &bytes.Buffer{}, &bytes.Buffer{}); code != 0 {
		t.Errorf("zero loss: exit %d, want 0", code)
	}
	if code := run([]string{"-input", filepath.Join(t.TempDir(), "missing.wav"), "-quiet"}, &bytes.Buffer{}, &bytes.Buffer{}); code != 2 {
		t.Errorf("missing input: exit %d, want 2", code)
	}
	if code := run([]string{"-h"}, &bytes.Buffer{}, &bytes.Buffer{}); code != 0 {
		t.Errorf("-h: exit %d, want 0", code)
	}
}

func TestCommandLineRedactsToken(t *testing.T) {
	got := commandLine([]string{"-mode", "whip", "-whip-token", "s3cret", "-whip-token=s3cret", "-calls", "2", "--audiohook-secret", "s3cret",
		"-twilio-token=s3cret", "-audiohook-key", "k1"})
	if strings.Contains(got, "s3cret") || !strings.Contains(got, "-calls 2") || !strings.Contains(got, "-audiohook-key k1") ||
		!strings.Contains(got, "-twilio-token=REDACTED") {
		t.Errorf("command line %q", got)
	}
}

// TestStreamModesNeedTheirEndpoints: a remote AudioHook or Twilio run names what it lacks.
func TestStreamModesNeedTheirEndpoints(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-mode", "audiohook", "-nats", "nats://x:4222"}, "-audiohook URL and -audiohook-key"},
		{[]string{"-mode", "twilio", "-nats", "nats://x:4222", "-twilio", "ws://x/twilio/media"}, "-twilio URL and -twilio-token"},
		{[]string{"-mode", "sip", "-twilio", "ws://x/twilio/media"}, "needs -mode twilio"},
		{[]string{"-mode", "audiohook", "-audiohook-secret", "not base64!"}, "audiohook-secret"},
		{[]string{"-mode", "audiohook", "-nats", "nats://x:4222", "-audiohook", "http://x/ws", "-audiohook-key", "k"}, "ws:// or wss://"},
	} {
		_, err := parse(append([]string{"-input", "a.wav"}, tc.args...), io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v; want an error naming %q", tc.args, err, tc.want)
		}
	}
	if _, err := parse([]string{"-input", "a.wav", "-mode", "twilio", "-nats", "nats://x:4222", "-twilio", "wss://x/twilio/media",
		"-twilio-token", "t"}, io.Discard); err != nil {
		t.Errorf("a complete remote Twilio run: %v", err)
	}
}

func TestModeNATSIsAnAlias(t *testing.T) {
	var stderr bytes.Buffer
	o, err := parse([]string{"-input", "a.wav", "-mode", "nats"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if o.cfg.Mode != "nats" || !strings.Contains(stderr.String(), "old name of -mode inproc") {
		t.Errorf("-mode nats: mode %q, stderr %q; want accepted with a note", o.cfg.Mode, stderr.String())
	}
	stderr.Reset()
	if o, err = parse([]string{"-input", "a.wav"}, &stderr); err != nil || o.cfg.Mode != "inproc" || stderr.Len() != 0 {
		t.Errorf("default mode: %v, %q; want inproc, no note", err, stderr.String())
	}
}
