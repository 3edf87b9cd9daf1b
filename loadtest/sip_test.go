package loadtest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/worker"
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
		imp  Impairments
	}{
		{"clean", Impairments{}},
		{"loss and jitter", Impairments{Loss: 0.05, Jitter: 30 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Mode = ModeSIP
			cfg.Inputs = []string{in}
			cfg.Calls = 8
			cfg.Ramp = 100
			cfg.Tenant = "lt-sip"
			cfg.Impair = tc.imp
			if !tc.imp.any() {
				cfg.MaxLoss = 0
			}
			cfg.MaxRefused = 0
			cfg.Progress = 0
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			rep, err := Run(ctx, cfg, Deps{Log: testLog(t), StackLog: testLog(t)})
			if err != nil {
				t.Fatal(err)
			}
			p := rep.Phases[0]
			const want = 8 * 2 * 150
			if p.Completed != 8 || p.Totals.Sent != want || p.Totals.Stops["end"] != 8 {
				t.Errorf("%d calls, sent %d, stops %v; want 8, %d, 8 × end", p.Completed, p.Totals.Sent, p.Totals.Stops, want)
			}
			// With jitter, the BYE can overtake a leg's last RTP packet, which ingest then never
			// publishes: at most one frame per leg, counted as unaccounted (or as network loss when
			// the tester dropped it itself). Without impairments nothing may be missing.
			if budget := int64(0); tc.imp.any() {
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

func TestParseSIPAndAnswer(t *testing.T) {
	m, ok := parseSIP([]byte("SIP/2.0 503 Service Unavailable\r\ni: abc\r\nCSeq: 1 INVITE\r\nRetry-After: 7\r\nt: <sip:x@y>;tag=zz\r\n\r\n"))
	if !ok || m.status() != 503 || m.header("call-id") != "abc" || m.header("retry-after") != "7" || m.header("to") != "<sip:x@y>;tag=zz" {
		t.Fatalf("parsed %+v", m)
	}
	addrs, err := answerPorts("v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 20000 RTP/AVP 0\r\nm=audio 20002 RTP/AVP 0\r\nc=IN IP4 127.0.0.2\r\n")
	if err != nil || len(addrs) != 2 || addrs[0].String() != "127.0.0.1:20000" || addrs[1].String() != "127.0.0.2:20002" {
		t.Errorf("answer ports %v, %v", addrs, err)
	}
	for _, bad := range []string{"", "v=0\r\nm=audio 1 RTP/AVP 0\r\n", "c=IN IP4 1.2.3.4\r\nm=audio 0 RTP/AVP 0\r\n"} {
		if _, err := answerPorts(bad); err == nil {
			t.Errorf("answer %q: no error", bad)
		}
	}
}

func TestULaw(t *testing.T) {
	for _, c := range []struct {
		in   int16
		want byte
	}{{0, 0xFF}, {-1, 0x7F}, {32767, 0x80}, {-32768, 0x00}, {1000, 0xCE}} {
		if got := linearToULaw(c.in); got != c.want {
			t.Errorf("μ-law(%d) = %#x, want %#x", c.in, got, c.want)
		}
	}
}

func FuzzSIPResponse(f *testing.F) {
	f.Add("SIP/2.0 200 OK\r\nCall-ID: a\r\nCSeq: 1 INVITE\r\n\r\nv=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n")
	f.Add("BYE sip:x SIP/2.0\r\nv: SIP/2.0/UDP 1.2.3.4\r\n i: x\r\n\r\n")
	f.Fuzz(func(t *testing.T, s string) {
		m, ok := parseSIP([]byte(s))
		if !ok {
			return
		}
		_ = m.status()
		_ = m.header("call-id")
		addrs, err := answerPorts(m.body)
		if err == nil && (len(addrs) == 0 || strings.Contains(s, "m=audio") == false) {
			t.Fatalf("answer without media: %v", addrs)
		}
	})
}

// TestSIPModeRemote points the SIP mode at a SIP ingest and NATS it did not start (-sip, -nats):
// the accounts come back from the workers' events.
func TestSIPModeRemote(t *testing.T) {
	if testing.Short() {
		t.Skip("a 2 s SIP run")
	}
	wc := worker.DefaultConfig()
	wc.Processors = []string{"accounting", probe.ProcessorName}
	st, err := stack.Start(stack.Config{Workers: 1, Worker: wc, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	addr, stop, err := startSIP(st.Ingest, "lt-sip-remote", 4, 2, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	cfg := DefaultConfig()
	cfg.Mode = ModeSIP
	cfg.SIP, cfg.NATSURL = addr, st.URL
	cfg.Inputs = []string{writeTone(t, t.TempDir(), 2*time.Second)}
	cfg.Calls = 4
	cfg.Ramp = 100
	cfg.Tenant = "lt-sip-remote"
	cfg.MaxLoss = 0
	cfg.Progress = 0
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rep, err := Run(ctx, cfg, Deps{Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	p := rep.Phases[0]
	if p.Totals.Sent != 4*2*100 || p.Totals.Received != p.Totals.Sent || p.Latency.Count != p.Totals.Sent || !rep.Pass {
		t.Errorf("sent %d, received %d, %d timed, failures %v", p.Totals.Sent, p.Totals.Received, p.Latency.Count, rep.Failures)
	}
}
