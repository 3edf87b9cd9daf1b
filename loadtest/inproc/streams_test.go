package inproc

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/loadtest"
	"github.com/callrouter/callrouter/loadtest/probe"
)

// checkEveryFrame requires a one-phase run of calls two-leg calls of frames frames per leg with
// every frame sent, processed and timed, none lost or unaccounted, and one setup time per call.
func checkEveryFrame(t *testing.T, rep *loadtest.Report, calls, frames int) {
	t.Helper()
	p := rep.Phases[0]
	want := int64(calls * 2 * frames)
	if p.Completed != calls || p.Totals.Legs != 2*calls || p.Totals.Sent != want || p.Totals.Received != want || p.Latency.Count != want {
		t.Errorf("%d calls, %d legs, sent %d, received %d, %d timed; want %d, %d, %d, %d, %d", p.Completed, p.Totals.Legs, p.Totals.Sent,
			p.Totals.Received, p.Latency.Count, calls, 2*calls, want, want, want)
	}
	if p.Totals.Lost != 0 || p.Totals.Unaccounted != 0 || p.Totals.Duplicated != 0 || p.Totals.Reordered != 0 || p.Totals.GapFilled != 0 {
		t.Errorf("lost %d, unaccounted %d, duplicated %d, reordered %d, gap-filled %d; want none (worst legs %+v)", p.Totals.Lost,
			p.Totals.Unaccounted, p.Totals.Duplicated, p.Totals.Reordered, p.Totals.GapFilled, p.WorstLegs)
	}
	if !rep.Pass || p.Totals.Stops["end"] != calls || len(p.Errors) != 0 {
		t.Errorf("failures %v, stops %v, errors %v", rep.Failures, p.Totals.Stops, p.Errors)
	}
	if p.Setup.Count != int64(calls) || p.Setup.P50 <= 0 {
		t.Errorf("setup %+v: want %d setup times", p.Setup, calls)
	}
}

// TestAudioHookModeInProcess plays two-leg calls as AudioHook clients into callrouter's own
// AudioHook server: a signed upgrade, open/opened, 200 ms stereo PCMU messages, close/closed;
// every frame is accounted for at the workers.
func TestAudioHookModeInProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("a 2 s AudioHook run")
	}
	cfg := shortConfig(t, loadtest.ModeAudioHook, "lt-ah", 3, 50, 2*time.Second)
	cfg.MaxRefused = 0
	rep := run(t, cfg, loadtest.Deps{Harness: Start, Log: testLog(t), StackLog: testLog(t)})
	checkEveryFrame(t, rep, 3, 100)
	// 10 binary messages of 200 ms per call, plus open and close.
	if got := rep.Phases[0].Impairments["ws_messages_sent"]; got != 3*12 {
		t.Errorf("%d WebSocket messages sent, want %d", got, 3*12)
	}
}

// TestTwilioModeInProcess plays two-leg calls as Twilio Media Streams (inbound and outbound
// tracks) into callrouter's own Twilio server; every frame is accounted for at the workers.
func TestTwilioModeInProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("a 2 s Twilio run")
	}
	cfg := shortConfig(t, loadtest.ModeTwilio, "lt-tw", 3, 50, 2*time.Second)
	cfg.MaxRefused = 0
	rep := run(t, cfg, loadtest.Deps{Harness: Start, Log: testLog(t), StackLog: testLog(t)})
	checkEveryFrame(t, rep, 3, 100)
	// A media message per frame and track, plus connected, start and stop.
	if got := rep.Phases[0].Impairments["ws_messages_sent"]; got != 3*(200+3) {
		t.Errorf("%d WebSocket messages sent, want %d", got, 3*203)
	}
}

// withCredentials is the harness with the run's credentials changed by edit: what a client with
// a wrong secret or token would send.
func withCredentials(edit func(l *loadtest.Local)) loadtest.Harness {
	return func(ctx context.Context, cfg loadtest.LocalConfig) (*loadtest.Local, error) {
		l, err := Start(ctx, cfg)
		if err == nil {
			edit(l)
		}
		return l, err
	}
}

// checkSetupsFailed requires a run whose every call failed its setup with an error containing
// want, and which therefore did not pass.
func checkSetupsFailed(t *testing.T, rep *loadtest.Report, calls int, want string) {
	t.Helper()
	p := rep.Phases[0]
	if p.Failed != calls || p.Completed != 0 || p.Refused != 0 || p.Totals.Sent != 0 || p.Setup.Count != 0 {
		t.Errorf("failed %d, completed %d, refused %d, sent %d, %d setup times; want %d failed setups and nothing else", p.Failed,
			p.Completed, p.Refused, p.Totals.Sent, p.Setup.Count, calls)
	}
	if len(p.Errors) != 1 || !strings.Contains(p.Errors[0], want) {
		t.Errorf("errors %q; want one kind, naming %q", p.Errors, want)
	}
	if rep.Pass {
		t.Error("the run passed; want failed setups to fail it (-max-refused 0)")
	}
}

// TestAudioHookWrongSecretFailsSetup: upgrades signed with another secret are refused (401), and
// the tester reports failed setups, not calls.
func TestAudioHookWrongSecretFailsSetup(t *testing.T) {
	if testing.Short() {
		t.Skip("refusals take the server's fail delay")
	}
	cfg := shortConfig(t, loadtest.ModeAudioHook, "lt-ah-bad", 2, 50, time.Second)
	cfg.MaxRefused = 0
	harness := withCredentials(func(l *loadtest.Local) { l.AudioHookSecret = "d3Jvbmcgc2VjcmV0LCAxNiBieXRlcyBvciBtb3Jl" })
	rep := run(t, cfg, loadtest.Deps{Harness: harness, Log: testLog(t), StackLog: testLog(t)})
	checkSetupsFailed(t, rep, 2, "401 Unauthorized")
}

// TestTwilioWrongTokenFailsSetup: a start with an unknown token is closed (1008) before any call
// is placed, and the tester reports failed setups, not calls.
func TestTwilioWrongTokenFailsSetup(t *testing.T) {
	if testing.Short() {
		t.Skip("a Twilio run")
	}
	cfg := shortConfig(t, loadtest.ModeTwilio, "lt-tw-bad", 2, 50, time.Second)
	cfg.MaxRefused = 0
	harness := withCredentials(func(l *loadtest.Local) { l.TwilioToken = "not-the-token-of-this-run" })
	rep := run(t, cfg, loadtest.Deps{Harness: harness, Log: testLog(t), StackLog: testLog(t)})
	checkSetupsFailed(t, rep, 2, "1008 unauthorized")
}

// TestStreamModesRemote points the AudioHook and Twilio modes at servers and a NATS they did
// not start (-audiohook/-twilio, -nats): the calls are named by the servers, and their accounts
// come back from the workers' events.
func TestStreamModesRemote(t *testing.T) {
	if testing.Short() {
		t.Skip("two 1 s runs")
	}
	st := remoteStack(t, 1, "accounting", probe.ProcessorName)
	var l loadtest.Local
	stopAH, err := startAudioHook(st.Ingest, &l, "lt-ws-remote", 2, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer stopAH()
	stopTW, err := startTwilio(st.Ingest, &l, "lt-ws-remote", 2, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer stopTW()
	for _, mode := range []string{loadtest.ModeAudioHook, loadtest.ModeTwilio} {
		cfg := shortConfig(t, mode, "lt-ws-remote", 2, 50, time.Second)
		cfg.NATSURL = st.URL
		if mode == loadtest.ModeAudioHook {
			cfg.AudioHook, cfg.AudioHookKey, cfg.AudioHookSecret = l.AudioHook, l.AudioHookKey, l.AudioHookSecret
		} else {
			cfg.Twilio, cfg.TwilioToken = l.Twilio, l.TwilioToken
		}
		rep := run(t, cfg, loadtest.Deps{Log: testLog(t)}) // a black-box run: no harness
		p := rep.Phases[0]
		if p.Totals.Sent != 2*2*50 || p.Totals.Received != p.Totals.Sent || p.Latency.Count != p.Totals.Sent || !rep.Pass {
			t.Errorf("%s: sent %d, received %d, %d timed, failures %v, worst %+v", mode, p.Totals.Sent, p.Totals.Received, p.Latency.Count,
				rep.Failures, p.WorstLegs)
		}
	}
}

// TestStreamModesCountRefusals: with room for about one call per worker, the placements past it
// are refused by the servers (AudioHook: disconnect with 503 and retryAfter; Twilio: close 1013),
// and the tester counts them as refused, neither failed nor set up; the calls set up are
// accounted frame by frame.
func TestStreamModesCountRefusals(t *testing.T) {
	if testing.Short() {
		t.Skip("two 1 s runs")
	}
	for _, mode := range []string{loadtest.ModeAudioHook, loadtest.ModeTwilio} {
		cfg := shortConfig(t, mode, "lt-ws-full", 5, 50, time.Second)
		cfg.Workers, cfg.WorkerCapacity = 1, 1
		rep := run(t, cfg, loadtest.Deps{Harness: Start, Log: testLog(t), StackLog: testLog(t)})
		p := rep.Phases[0]
		if p.Completed < 1 || p.Refused < 1 || p.Failed != 0 || p.Completed+p.Refused != 5 || p.Setup.Count != int64(p.Completed) {
			t.Errorf("%s: completed %d, refused %d, failed %d, %d setup times, errors %q; want 5 calls set up or refused, some of each",
				mode, p.Completed, p.Refused, p.Failed, p.Setup.Count, p.Errors)
		}
		if want := int64(p.Completed * 2 * 50); p.Totals.Sent != want || p.Totals.Received != want {
			t.Errorf("%s: sent %d, received %d; want %d each", mode, p.Totals.Sent, p.Totals.Received, want)
		}
	}
}
