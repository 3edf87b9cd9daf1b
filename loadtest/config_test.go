package loadtest

import (
	"strings"
	"testing"
	"time"
)

// TestP99RatioBarCanFail holds the p99 bar to account: a bound too loose to ever fail is refused,
// and the README's 2× bar fails a run 2.5× the baseline and passes one 1.8×.
func TestP99RatioBarCanFail(t *testing.T) {
	c := DefaultConfig()
	c.Inputs, c.Baseline = []string{"x.wav"}, true
	c.MaxP99Ratio = 1000
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "max-p99-ratio 1000") {
		t.Errorf("max-p99-ratio 1000: %v, want refused", err)
	}
	c.MaxP99Ratio = 2
	if err := c.Validate(); err != nil {
		t.Fatalf("max-p99-ratio 2: %v", err)
	}
	for _, tc := range []struct {
		p99  float64
		pass bool
	}{{2.5, false}, {1.8, true}} {
		r := &Report{Phases: []PhaseReport{{Name: "callrouter", Totals: Totals{Sent: 1, Received: 1}}}, Ratio: &Ratio{P99: tc.p99}}
		r.verdict(&c)
		if r.Pass != tc.pass {
			t.Errorf("p99 %.1f× the baseline against a 2× bar: pass %v, want %v (%v)", tc.p99, r.Pass, tc.pass, r.Failures)
		}
	}
}

// -ingests takes at least one node, and more only where the tester runs the ingest nodes: mode
// inproc (and the raw phases) on the in-process stack.
func TestPublishConnsFlag(t *testing.T) {
	for _, tc := range []struct {
		nats           string
		conns, ingests int
		bad            bool
	}{{"", 1, 1, false}, {"", 4, 1, false}, {"", 0, 1, false}, {"", -1, 1, true}, {"", 65, 1, true},
		{"nats://127.0.0.1:4222", 2, 1, true}, {"", 2, 2, true}} {
		c := DefaultConfig()
		c.Inputs, c.NATSURL, c.PublishConns, c.Ingests = []string{"x.wav"}, tc.nats, tc.conns, tc.ingests
		err := c.Validate()
		if bad := err != nil && strings.Contains(err.Error(), "publish-conns"); bad != tc.bad {
			t.Errorf("nats %q, publish-conns %d, ingests %d: %v; want refused %v", tc.nats, tc.conns, tc.ingests, err, tc.bad)
		}
	}
}

func TestIngestsFlag(t *testing.T) {
	for _, tc := range []struct {
		mode, nats string
		ingests    int
		bad        bool
	}{{ModeInproc, "", 1, false}, {ModeInproc, "", 4, false}, {ModeBaseline, "", 4, false}, {ModeInproc, "", 0, true},
		{ModeSIP, "", 2, true}, {ModeInproc, "nats://127.0.0.1:4222", 2, true}} {
		c := DefaultConfig()
		c.Inputs, c.Mode, c.NATSURL, c.Ingests = []string{"x.wav"}, tc.mode, tc.nats, tc.ingests
		err := c.Validate()
		if bad := err != nil && strings.Contains(err.Error(), "ingests"); bad != tc.bad {
			t.Errorf("mode %s, nats %q, ingests %d: %v; want refused %v", tc.mode, tc.nats, tc.ingests, err, tc.bad)
		}
	}
}

// -whip-read-coalesce is for mode whip's in-process endpoint only: another mode, or a remote
// endpoint (-whip), refuses it rather than ignore it.
func TestWHIPReadCoalesceFlag(t *testing.T) {
	zero := time.Duration(0)
	for _, tc := range []struct {
		mode, whip string
		bad        bool
	}{{ModeWHIP, "", false}, {ModeInproc, "", true}, {ModeSIP, "", true}, {ModeWHIP, "http://127.0.0.1:1/whip", true}} {
		c := DefaultConfig()
		c.Inputs, c.Mode, c.WHIP, c.WHIPReadCoalesce = []string{"x.wav"}, tc.mode, tc.whip, &zero
		if tc.whip != "" {
			c.NATSURL = "nats://127.0.0.1:4222"
		}
		err := c.Validate()
		if bad := err != nil && strings.Contains(err.Error(), "whip-read-coalesce"); bad != tc.bad {
			t.Errorf("mode %s, -whip %q: %v; want refused %v", tc.mode, tc.whip, err, tc.bad)
		}
	}
}
