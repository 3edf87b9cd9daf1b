// Package peertest helps tests that run external peers (SIPp, Chromium, sox, ffmpeg, opusdec,
// espeak-ng, nats-server, the services' binaries). It decides what a test does when a peer it
// needs is missing: on a developer's machine it skips, and where CALLROUTER_REQUIRE_PEERS is set
// (CI: .ci/run installs every peer, then sets it) it fails, so a broken install step can never
// pass as a run of skipped tests. And it picks the ports such a peer binds itself.
package peertest

import (
	"os"
	"testing"
)

// EnvRequire is the environment variable that turns a missing peer into a test failure.
const EnvRequire = "CALLROUTER_REQUIRE_PEERS"

// Missing reports that the peer the test needs is not installed: t skips, or fails when
// EnvRequire is set.
func Missing(t testing.TB, why string) {
	t.Helper()
	if os.Getenv(EnvRequire) != "" {
		t.Fatalf("%s (%s is set: every peer must be installed)", why, EnvRequire)
	}
	t.Skip(why)
}
