package inproc

import (
	"testing"
	"time"

	"github.com/callrouter/callrouter/loadtest"
	"github.com/callrouter/callrouter/loadtest/probe"
)

// TestSIPModeInProcess plays SIPREC calls (two legs from a stereo file) through callrouter's own
// SIP ingest: clean, every frame accounted for; then with loss and jitter injected, the lost
// packets come back as frames ingest gap-filled and nothing is lost or unaccounted downstream.
func TestSIPModeInProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("two 3 s SIP runs")
	}
	in := writeTone(t, t.TempDir(), 3*time.Second)
	for _, tc := range []struct {
		name string
		imp  loadtest.Impairments
	}{
		{"clean", loadtest.Impairments{}},
		{"loss and jitter", loadtest.Impairments{Loss: 0.05, Jitter: 30 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := shortConfig(t, loadtest.ModeSIP, "lt-sip", 8, 100, 0)
			cfg.Inputs = []string{in}
			cfg.Impair = tc.imp
			if tc.imp.Loss > 0 || tc.imp.Jitter > 0 {
				cfg.MaxLoss = -1
			}
			cfg.MaxRefused = 0
			rep := run(t, cfg, loadtest.Deps{Harness: Start, Log: testLog(t), StackLog: testLog(t)})
			p := rep.Phases[0]
			const want = 8 * 2 * 150
			if p.Completed != 8 || p.Totals.Sent != want || p.Totals.Stops["end"] != 8 {
				t.Errorf("%d calls, sent %d, stops %v; want 8, %d, 8 × end", p.Completed, p.Totals.Sent, p.Totals.Stops, want)
			}
			// With jitter, the BYE can overtake a leg's last RTP packet, which ingest then never
			// publishes: at most one frame per leg, counted as unaccounted (or as network loss when
			// the tester dropped it itself). Without impairments nothing may be missing.
			if budget := int64(0); tc.imp.Loss > 0 || tc.imp.Jitter > 0 {
				budget = 8 * 2
				if p.Totals.Lost+p.Totals.Unaccounted > budget || p.Totals.Lost != p.Totals.LostBy["network_loss"] {
					t.Errorf("lost %d (%v), unaccounted %d; want at most %d, all network loss (worst legs %+v)", p.Totals.Lost,
						p.Totals.LostBy, p.Totals.Unaccounted, budget, p.WorstLegs)
				}
			} else if p.Totals.Lost != 0 || p.Totals.Unaccounted != 0 || !rep.Pass {
				t.Errorf("lost %d, unaccounted %d, failures %v, worst legs %+v", p.Totals.Lost, p.Totals.Unaccounted, rep.Failures, p.WorstLegs)
			}
			if p.Impairments["rtp_sent"]+p.Impairments["dropped"] != want {
				t.Errorf("RTP %v: sent + dropped should be the %d frames", p.Impairments, want)
			}
			if tc.imp.Loss == 0 {
				if p.Totals.Received != want || p.Totals.GapFilled != 0 || p.Latency.Count != want {
					t.Errorf("received %d (%d gap-filled, %d timed), want %d, none, %d", p.Totals.Received, p.Totals.GapFilled, p.Latency.Count, want, want)
				}
				return
			}
			if p.Impairments["dropped"] == 0 || p.Totals.GapFilled < p.Impairments["dropped"] || p.Totals.Received < want {
				t.Errorf("dropped %d packets, ingest gap-filled %d frames, received %d; want drops, at least as many fills, >= %d received",
					p.Impairments["dropped"], p.Totals.GapFilled, p.Totals.Received, want)
			}
		})
	}
}

// TestSIPModeRemote points the SIP mode at a SIP ingest and NATS it did not start (-sip, -nats):
// the accounts come back from the workers' events.
func TestSIPModeRemote(t *testing.T) {
	if testing.Short() {
		t.Skip("a 2 s SIP run")
	}
	st := remoteStack(t, 1, "accounting", probe.ProcessorName)
	addr, stop, err := startSIP(st.Ingest, "lt-sip-remote", 4, 2, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	cfg := shortConfig(t, loadtest.ModeSIP, "lt-sip-remote", 4, 100, 2*time.Second)
	cfg.SIP, cfg.NATSURL = addr, st.URL
	rep := run(t, cfg, loadtest.Deps{Log: testLog(t)}) // a black-box run: no harness
	p := rep.Phases[0]
	if p.Totals.Sent != 4*2*100 || p.Totals.Received != p.Totals.Sent || p.Latency.Count != p.Totals.Sent || !rep.Pass {
		t.Errorf("sent %d, received %d, %d timed, failures %v", p.Totals.Sent, p.Totals.Received, p.Latency.Count, rep.Failures)
	}
}
