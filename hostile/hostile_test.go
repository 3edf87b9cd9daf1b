package hostile

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/peertest"
)

// TestHostile attacks one node (nats-server, a router, a worker and the ingest under attack,
// all real processes on loopback) while it plays three two-leg victim calls, and prints the
// hostile-input table. Every row checks that the node stays alive and that the victims lose no
// frame; rows whose intended behaviour today's code lacks fail, after printing their row.
func TestHostile(t *testing.T) {
	if buildErr != "" {
		peertest.Missing(t, buildErr)
	}
	if testing.Short() {
		t.Skip("the hostile-input suite takes minutes")
	}
	s := &suite{t: t, n: startNode(t)}
	legs0, t0 := s.n.victimLegs(), time.Now()
	// The rows that damage today's node for good (a call that never stops publishing, a victim
	// given up, a wedged ingest) come last, so that their damage does not show in the others.
	s.attack(t, "RFC 4475 torture messages (UDP)", s.rfc4475)
	s.attack(t, "SIP method flood (20,000 distinct methods)", s.methodFlood)
	s.attack(t, "SIP header flood and oversized datagrams", s.headerFlood)
	s.attack(t, "INVITE flood from one source (2,000 in a burst)", s.inviteFlood)
	s.attack(t, "WHIP POST flood, unknown token", s.whipBadToken)
	s.attack(t, "WHIP POST flood, good token, junk SDP", s.whipJunk)
	s.attack(t, "WHIP POST flood, good token, valid offers (300 from one source)", s.whipValid)
	s.attack(t, "WHIP POST with a 10 MB body", s.whipOversized)
	s.attack(t, "slowloris HTTP (200) and idle SIP TCP (1,000) connections", s.slowloris)
	s.attack(t, "NATS control-message junk", s.natsJunk)
	s.attack(t, "RTP flood to unallocated ports (100,000)", s.rtpUnallocated)
	s.attack(t, "RTP flood to a call's port from another source (100,000)", s.rtpAllocatedSpoofed)
	s.attack(t, "RTP from the peer with random sequence numbers and timestamps (10,000)", s.rtpPeerRandom)
	s.attack(t, "RTP timestamp jump of 2^30 behind a held-back packet", s.rtpTimestampJump)
	s.attack(t, "frame with a far-forward sequence number on a victim's subject", s.farForward)
	s.attack(t, "NATS replay request with 2,000 legs", s.replayLegs)
	s.report(t, s.summary(legs0, time.Since(t0)))
}

// summary checks the victims over the whole suite (between the rows too) and says what ran.
func (s *suite) summary(legs0 []legState, took time.Duration) string {
	before := map[string]legState{}
	for _, l := range legs0 {
		before[l.key] = l
	}
	frames, holes, legs := 0, 0, 0
	for _, l := range s.n.victimLegs() {
		b := before[l.key]
		frames += l.max - b.max
		holes += l.holes - b.holes
		legs++
	}
	if holes > 0 {
		s.t.Errorf("the victim calls lost %d frames over the suite", holes)
	}
	rev, _ := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	return fmt.Sprintf("Measured %s at commit %s by `go test ./hostile -run TestHostile -v -count=1`: one node (nats-server, a router, "+
		"a worker, the ingest under attack; processes on loopback) playing %d two-leg victim calls throughout. Over the %.0f s of attacks "+
		"the %d victim legs still audited (one call is given up to the far-forward frame) processed %d frames and lost %d (seqlog files).",
		time.Now().UTC().Format("2006-01-02"), strings.TrimSpace(string(rev)), victimCalls, took.Seconds(), legs, frames, holes)
}
