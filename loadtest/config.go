package loadtest

import (
	"errors"
	"fmt"
	"time"

	"github.com/callrouter/callrouter/internal/subjects"
)

// Modes of a run.
const (
	// ModeNATS places calls through a real ingest node and publishes their frames onto NATS, as an
	// ingest transport would, bypassing SIP/WebRTC: it loads the router and the workers.
	ModeNATS = "nats"
	// ModeSIP plays each call as a SIP user agent client with RTP (a SIPREC session for two or
	// more legs) into callrouter's SIP ingest, with optional loss, jitter and reordering.
	ModeSIP = "sip"
	// ModeWHIP plays each call as a WebRTC WHIP client (pion) into callrouter's WHIP ingest; one
	// leg per call.
	ModeWHIP = "whip"
	// ModeBaseline publishes the same frames at the same rate from plain publishers to plain
	// per-call subscribers: NATS alone, the denominator of callrouter's overhead.
	ModeBaseline = "baseline"
)

// Config configures a load test run.
type Config struct {
	Mode     string   // ModeNATS or ModeBaseline
	Baseline bool     // in ModeNATS, run a baseline phase first with the same load
	Rounds   int      // with Baseline: alternate baseline and callrouter phases this many times
	Inputs   []string // WAV or pcap files, or directories of them, played round-robin
	Legs     int      // legs per call taken from each input (0: every channel or stream)

	Calls        int           // concurrent calls
	Ramp         float64       // calls started per second
	CallDuration time.Duration // per call; 0 plays each recording once; longer loops it
	RunTime      time.Duration // keep Calls concurrent this long; 0 plays Calls calls once each
	Speed        float64       // pacing speed factor (1 = real time)

	Tenant    string // tenant of the test calls
	NATSURL   string // callrouter's NATS; empty starts a one-process stack in this process
	SIP       string // SIP mode: host:port of a running SIP ingest (needs NATSURL); empty runs one in-process
	Impair    Impairments
	WHIP      string // WHIP mode: endpoint URL of a running WHIP ingest (needs NATSURL); empty runs one in-process
	WHIPToken string // WHIP mode: bearer token
	// HangupDelay is how long a SIP or WHIP call waits after its last packet before it hangs up,
	// as a person does; 0 races the hang-up against the last packets in flight.
	HangupDelay time.Duration

	Workers          int // in-process stack: workers in the pool
	WorkerCapacity   int // in-process stack: calls per worker (0: enough for Calls, plus a margin)
	Shards           int // pacer shards (0: one per CPU)
	Tick             time.Duration
	StartConcurrency int           // call setups in flight at once
	Settle           time.Duration // how long to wait for worker reports after the last call ends
	Progress         time.Duration // progress line interval (0: none)
	PIDs             []int         // other processes to watch (CPU, memory)

	MaxLoss     float64       // pass/fail: largest loss ratio allowed (negative: not checked)
	MaxP99      time.Duration // pass/fail: largest p99 frame latency (0: not checked)
	MaxP99Ratio float64       // pass/fail: largest p99 relative to the baseline's (0: not checked; at most MaxP99RatioLimit)
	MaxRefused  float64       // pass/fail: largest ratio of refused call setups (negative: not checked)
}

// MaxP99RatioLimit is the largest MaxP99Ratio accepted: a bound of more than ten times the
// baseline's p99 cannot catch a regression, so it would only look like a check. The README's
// bar is 2 (make loadtest: -max-p99-ratio 2).
const MaxP99RatioLimit = 10

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Mode:             ModeNATS,
		Calls:            10,
		Ramp:             50,
		Speed:            1,
		Rounds:           1,
		HangupDelay:      200 * time.Millisecond,
		Tenant:           "loadtest",
		Workers:          2,
		Tick:             time.Millisecond,
		StartConcurrency: 64,
		Settle:           15 * time.Second,
		Progress:         5 * time.Second,
		MaxLoss:          -1,
		MaxRefused:       -1,
	}
}

// Validate reports every bad field, naming it.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf("loadtest: "+format, a...)) }
	switch c.Mode {
	case ModeNATS, ModeSIP, ModeWHIP, ModeBaseline:
	default:
		bad("mode %q: want %q, %q, %q or %q", c.Mode, ModeNATS, ModeSIP, ModeWHIP, ModeBaseline)
	}
	if c.WHIP != "" && (c.Mode != ModeWHIP || c.NATSURL == "") {
		bad("whip %q: a remote WHIP ingest needs -mode whip and -nats (its workers' events)", c.WHIP)
	}
	if c.Mode == ModeWHIP && c.NATSURL != "" && c.WHIP == "" {
		bad("nats: in WHIP mode a remote stack also needs -whip URL")
	}
	if c.Baseline && c.Mode == ModeBaseline {
		bad("baseline: mode %q is the baseline already", ModeBaseline)
	}
	if c.SIP != "" && (c.Mode != ModeSIP || c.NATSURL == "") {
		bad("sip %q: a remote SIP ingest needs -mode sip and -nats (its workers' events)", c.SIP)
	}
	if c.Mode == ModeSIP && c.NATSURL != "" && c.SIP == "" {
		bad("nats: in SIP mode a remote stack also needs -sip host:port")
	}
	if c.Impair.any() && c.Mode != ModeSIP {
		bad("loss, jitter and reorder impair RTP: they need -mode sip")
	}
	if c.HangupDelay < 0 || c.HangupDelay > 10*time.Second {
		bad("hangup-delay %v: want 0-10s", c.HangupDelay)
	}
	if c.Impair.Loss < 0 || c.Impair.Loss >= 1 {
		bad("loss %v: want a probability in [0, 1)", c.Impair.Loss)
	}
	if c.Impair.Reorder < 0 || c.Impair.Reorder >= 1 {
		bad("reorder %v: want a probability in [0, 1)", c.Impair.Reorder)
	}
	if c.Impair.Jitter < 0 || c.Impair.Jitter > 2*time.Second {
		bad("jitter %v: want 0-2s", c.Impair.Jitter)
	}
	if len(c.Inputs) == 0 {
		bad("input: at least one WAV or pcap file (or directory) is needed")
	}
	if c.Rounds < 1 || c.Rounds > 20 {
		bad("rounds %d: want 1-20", c.Rounds)
	}
	if c.Rounds > 1 && !c.Baseline {
		bad("rounds %d: alternating rounds need the baseline phase (-baseline)", c.Rounds)
	}
	if c.Legs < 0 || c.Legs > 8 {
		bad("legs %d: want 0-8", c.Legs)
	}
	if c.Calls < 1 {
		bad("calls %d: want at least 1", c.Calls)
	}
	if c.Ramp <= 0 {
		bad("ramp %v: want a positive number of calls per second", c.Ramp)
	}
	if c.CallDuration < 0 {
		bad("call-duration %v: want 0 (whole recording) or positive", c.CallDuration)
	}
	if c.RunTime < 0 {
		bad("run-time %v: want 0 (each call once) or positive", c.RunTime)
	}
	if c.Speed <= 0 || c.Speed > 100 {
		bad("speed %v: want a factor in (0, 100]", c.Speed)
	}
	if err := subjects.Check("tenant", c.Tenant); err != nil {
		bad("tenant: %v", err)
	}
	if c.Workers < 1 && c.NATSURL == "" {
		bad("workers %d: the in-process stack needs at least 1", c.Workers)
	}
	if c.WorkerCapacity < 0 {
		bad("worker-capacity %d: want 0 (auto) or positive", c.WorkerCapacity)
	}
	if c.Shards < 0 {
		bad("shards %d: want 0 (one per CPU) or positive", c.Shards)
	}
	if c.Tick <= 0 || c.Tick > 20*time.Millisecond {
		bad("tick %v: want (0, 20ms]", c.Tick)
	}
	if c.StartConcurrency < 1 {
		bad("start-concurrency %d: want at least 1", c.StartConcurrency)
	}
	if c.Settle <= 0 {
		bad("settle %v: want positive", c.Settle)
	}
	if c.Progress < 0 {
		bad("progress %v: want 0 (off) or positive", c.Progress)
	}
	if c.MaxP99 < 0 {
		bad("max-p99 %v: want 0 (unchecked) or positive", c.MaxP99)
	}
	if c.MaxP99Ratio < 0 || c.MaxP99Ratio > MaxP99RatioLimit {
		bad("max-p99-ratio %v: want 0 (unchecked) or a ratio in (0, %d]; a larger bound cannot fail", c.MaxP99Ratio, MaxP99RatioLimit)
	}
	if c.MaxP99Ratio > 0 && !c.Baseline {
		bad("max-p99-ratio needs the baseline phase (-baseline)")
	}
	if c.MaxRefused > 1 {
		bad("max-refused %v: want a ratio in [0, 1] (negative: unchecked)", c.MaxRefused)
	}
	if c.MaxLoss > 1 {
		bad("max-loss %v: want a ratio in [0, 1] (negative: unchecked)", c.MaxLoss)
	}
	for _, p := range c.PIDs {
		if p <= 0 {
			bad("pid %d: want a positive process id", p)
		}
	}
	return errors.Join(errs...)
}

// checks reports whether any pass/fail threshold is set.
func (c *Config) checks() bool {
	return c.MaxLoss >= 0 || c.MaxP99 > 0 || c.MaxP99Ratio > 0 || c.MaxRefused >= 0
}
