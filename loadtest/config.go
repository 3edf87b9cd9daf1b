package loadtest

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/callrouter/callrouter/internal/subjects"
)

// Modes of a run.
const (
	// ModeInproc places calls through an ingest node running in the tester's own process (package
	// inproc) and publishes their frames onto NATS, as an ingest transport would, bypassing
	// SIP/WebRTC: a white-box mode that loads the router and the workers (in-process, or remote
	// with a NATS URL) but never a remote ingest.
	ModeInproc = "inproc"
	// ModeNATS is the old name of ModeInproc, still accepted.
	ModeNATS = "nats"
	// ModeSIP plays each call as a SIP user agent client with RTP (a SIPREC session for two or
	// more legs) into callrouter's SIP ingest, with optional loss, jitter and reordering.
	ModeSIP = "sip"
	// ModeWHIP plays each call as a WebRTC WHIP client (pion) into callrouter's WHIP ingest; one
	// leg per call.
	ModeWHIP = "whip"
	// ModeAudioHook plays each call as a Genesys AudioHook client (protocol v2: signed WebSocket
	// upgrade, open/opened, 200 ms PCMU messages, close/closed) into callrouter's AudioHook
	// server; one or two legs (external, internal) per call.
	ModeAudioHook = "audiohook"
	// ModeTwilio plays each call as Twilio Media Streams (connected, start with the token in
	// customParameters, 20 ms base64 μ-law media per track, stop) into callrouter's Twilio
	// server; one or two legs (inbound, outbound tracks) per call.
	ModeTwilio = "twilio"
	// ModeBaseline publishes the same frames at the same rate from plain publishers to plain
	// per-call subscribers: NATS alone, the denominator of callrouter's overhead.
	ModeBaseline = "baseline"
)

// canonicalMode maps the old name of a mode to its current one.
func canonicalMode(m string) string {
	if m == ModeNATS {
		return ModeInproc
	}
	return m
}

// Config configures a load test run.
type Config struct {
	Mode     string   // ModeInproc, ModeSIP, ModeWHIP, ModeAudioHook, ModeTwilio or ModeBaseline
	Baseline bool     // run a baseline phase first with the same load
	Floor    bool     // with Baseline: also the floor phase, raw NATS read by one wildcard subscription per connection
	Rounds   int      // with Baseline: alternate baseline and callrouter phases this many times
	Inputs   []string // WAV or pcap files, or directories of them, played round-robin
	Legs     int      // legs per call taken from each input (0: every channel or stream)

	Calls        int           // concurrent calls
	Ramp         float64       // calls started per second
	CallDuration time.Duration // per call; 0 plays each recording once; longer loops it
	RunTime      time.Duration // keep Calls concurrent this long; 0 plays Calls calls once each
	Speed        float64       // pacing speed factor (1 = real time)

	Tenant    string // tenant of the test calls
	NATSURL   string // callrouter's NATS; empty starts a one-process stack in this process (package inproc)
	SIP       string // SIP mode: host:port of a running SIP ingest (needs NATSURL); empty runs one in-process
	Impair    Impairments
	RTPSocket string // SIP mode: RTPSocketAuto, RTPSocketLeg (a socket per leg) or RTPSocketShared (one, batched sends)
	WHIP      string // WHIP mode: endpoint URL of a running WHIP ingest (needs NATSURL); empty runs one in-process
	WHIPToken string // WHIP mode: bearer token
	// AudioHook mode: the WebSocket URL of a running AudioHook server (needs NATSURL; empty runs
	// one in-process), its X-API-KEY and the key's base64 client secret (empty: unsigned upgrades).
	AudioHook       string
	AudioHookKey    string
	AudioHookSecret string
	// Twilio mode: the WebSocket URL of a running Media Streams server (needs NATSURL; empty runs
	// one in-process) and the token sent in start.customParameters.
	Twilio      string
	TwilioToken string
	// HangupDelay is how long a SIP, WHIP, AudioHook or Twilio call waits after its last packet before it hangs up,
	// as a person does; 0 races the hang-up against the last packets in flight.
	HangupDelay time.Duration

	Workers int // in-process stack: workers in the pool
	// Ingests is how many publishing connections carry the frames, the calls spread over them in
	// turn: mode inproc's ingest nodes in this process (each with its own NATS connection), and
	// the baseline's and the floor's publishers.
	Ingests int
	// PublishConns is the in-process ingest node's publishing connections (ingest's
	// -nats-publish-conns; 0, the default, is ingest's default: automatic): its calls spread
	// over them; the baseline and the floor publish through as many connections as the ingest
	// uses for the run's calls, like for like.
	PublishConns   int
	WorkerCapacity int // in-process stack: calls per worker (0: enough for Calls, plus a margin)
	// WHIPReadCoalesce is the in-process WHIP endpoint's -whip-read-coalesce (nil: its default).
	WHIPReadCoalesce *time.Duration
	// Secure runs the in-process stack's NATS as in production: TLS, and every component (and
	// the tester, for the baseline) signed in with its own least-privilege identity.
	Secure           bool
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
	// MaxRSSPerCall is the pass/fail bound on callrouter's resident memory per concurrent call
	// above the baseline's, in KB of 1,000 bytes (RSSAbove.Checked; 0: not checked).
	MaxRSSPerCall float64
}

// MaxP99RatioLimit is the largest MaxP99Ratio accepted: a bound of more than ten times the
// baseline's p99 cannot catch a regression, so it would only look like a check. The README's
// bar is 2 (make loadtest: -max-p99-ratio 2).
const MaxP99RatioLimit = 10

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Mode:             ModeInproc,
		Calls:            10,
		Ramp:             50,
		Speed:            1,
		Rounds:           1,
		HangupDelay:      200 * time.Millisecond,
		RTPSocket:        RTPSocketAuto,
		Tenant:           "loadtest",
		Workers:          2,
		Ingests:          1,
		PublishConns:     0,
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
	var p problems
	c.checkMode(&p)
	c.checkImpairments(&p)
	c.checkLoad(&p)
	c.checkTester(&p)
	c.checkThresholds(&p)
	return errors.Join(p...)
}

// problems collects a config's errors, each naming its field.
type problems []error

func (p *problems) add(format string, a ...any) {
	*p = append(*p, fmt.Errorf("loadtest: "+format, a...))
}

// checkMode checks the mode and the remote endpoints it needs.
func (c *Config) checkMode(p *problems) {
	switch c.Mode {
	case ModeInproc, ModeNATS, ModeSIP, ModeWHIP, ModeAudioHook, ModeTwilio, ModeBaseline:
	default:
		p.add("mode %q: want %q (or its old name %q), %q, %q, %q, %q or %q", c.Mode, ModeInproc, ModeNATS, ModeSIP, ModeWHIP, ModeAudioHook,
			ModeTwilio, ModeBaseline)
	}
	c.checkStreams(p)
	if c.WHIP != "" && (c.Mode != ModeWHIP || c.NATSURL == "") {
		p.add("whip %q: a remote WHIP ingest needs -mode whip and -nats (its workers' events)", c.WHIP)
	}
	if c.Mode == ModeWHIP && c.NATSURL != "" && c.WHIP == "" {
		p.add("nats: in WHIP mode a remote stack also needs -whip URL")
	}
	if c.Baseline && c.Mode == ModeBaseline {
		p.add("baseline: mode %q is the baseline already", ModeBaseline)
	}
	if c.SIP != "" && (c.Mode != ModeSIP || c.NATSURL == "") {
		p.add("sip %q: a remote SIP ingest needs -mode sip and -nats (its workers' events)", c.SIP)
	}
	if c.Mode == ModeSIP && c.NATSURL != "" && c.SIP == "" {
		p.add("nats: in SIP mode a remote stack also needs -sip host:port")
	}
	if c.Secure && c.NATSURL != "" {
		p.add("secure: TLS and permissions are for the in-process stack; a remote one has its own")
	}
}

// checkStreams checks the remote endpoints and credentials of the AudioHook and Twilio modes.
func (c *Config) checkStreams(p *problems) {
	if c.AudioHook != "" && (c.Mode != ModeAudioHook || c.NATSURL == "") {
		p.add("audiohook %q: a remote AudioHook server needs -mode audiohook and -nats (its workers' events)", c.AudioHook)
	}
	if c.Mode == ModeAudioHook && c.NATSURL != "" && (c.AudioHook == "" || c.AudioHookKey == "") {
		p.add("nats: in AudioHook mode a remote stack also needs -audiohook URL and -audiohook-key")
	}
	if c.AudioHookSecret != "" {
		if b, err := base64.StdEncoding.DecodeString(c.AudioHookSecret); err != nil || len(b) == 0 {
			p.add("audiohook-secret: want the client secret in base64 (as the AudioHook integration shows it)")
		}
	}
	if c.Twilio != "" && (c.Mode != ModeTwilio || c.NATSURL == "") {
		p.add("twilio %q: a remote Media Streams server needs -mode twilio and -nats (its workers' events)", c.Twilio)
	}
	if c.Mode == ModeTwilio && c.NATSURL != "" && (c.Twilio == "" || c.TwilioToken == "") {
		p.add("nats: in Twilio mode a remote stack also needs -twilio URL and -twilio-token")
	}
	for flag, u := range map[string]string{"audiohook": c.AudioHook, "twilio": c.Twilio} {
		if u != "" && !strings.HasPrefix(u, "ws://") && !strings.HasPrefix(u, "wss://") {
			p.add("%s %q: want a ws:// or wss:// URL", flag, u)
		}
	}
}

// checkImpairments checks the RTP impairments and the hang-up delay of the SIP and WHIP modes.
func (c *Config) checkImpairments(p *problems) {
	if c.Impair.any() && c.Mode != ModeSIP {
		p.add("loss, jitter and reorder impair RTP: they need -mode sip")
	}
	switch c.RTPSocket {
	case RTPSocketAuto, RTPSocketLeg, RTPSocketShared:
	default:
		p.add("sip-rtp-socket %q: want %q, %q or %q", c.RTPSocket, RTPSocketAuto, RTPSocketLeg, RTPSocketShared)
	}
	if c.HangupDelay < 0 || c.HangupDelay > 10*time.Second {
		p.add("hangup-delay %v: want 0-10s", c.HangupDelay)
	}
	if c.Impair.Loss < 0 || c.Impair.Loss >= 1 {
		p.add("loss %v: want a probability in [0, 1)", c.Impair.Loss)
	}
	if c.Impair.Reorder < 0 || c.Impair.Reorder >= 1 {
		p.add("reorder %v: want a probability in [0, 1)", c.Impair.Reorder)
	}
	if c.Impair.Jitter < 0 || c.Impair.Jitter > 2*time.Second {
		p.add("jitter %v: want 0-2s", c.Impair.Jitter)
	}
}

// checkLoad checks what is played: the inputs, the rounds and the shape of the load.
func (c *Config) checkLoad(p *problems) {
	if len(c.Inputs) == 0 {
		p.add("input: at least one WAV or pcap file (or directory) is needed")
	}
	if c.Rounds < 1 || c.Rounds > 20 {
		p.add("rounds %d: want 1-20", c.Rounds)
	}
	if c.Floor && !c.Baseline {
		p.add("floor: the wildcard floor is reported next to the baseline (-baseline)")
	}
	if c.Rounds > 1 && !c.Baseline {
		p.add("rounds %d: alternating rounds need the baseline phase (-baseline)", c.Rounds)
	}
	if c.Legs < 0 || c.Legs > 8 {
		p.add("legs %d: want 0-8", c.Legs)
	}
	if c.Calls < 1 {
		p.add("calls %d: want at least 1", c.Calls)
	}
	if c.Ramp <= 0 {
		p.add("ramp %v: want a positive number of calls per second", c.Ramp)
	}
	if c.CallDuration < 0 {
		p.add("call-duration %v: want 0 (whole recording) or positive", c.CallDuration)
	}
	if c.RunTime < 0 {
		p.add("run-time %v: want 0 (each call once) or positive", c.RunTime)
	}
	if c.Speed <= 0 || c.Speed > 100 {
		p.add("speed %v: want a factor in (0, 100]", c.Speed)
	}
	if err := subjects.Check("tenant", c.Tenant); err != nil {
		p.add("tenant: %v", err)
	}
}

// checkTester checks the in-process stack's size and the tester's own machinery.
func (c *Config) checkTester(p *problems) {
	if c.Workers < 1 && c.NATSURL == "" {
		p.add("workers %d: the in-process stack needs at least 1", c.Workers)
	}
	if c.Ingests < 1 {
		p.add("ingests %d: want at least 1", c.Ingests)
	}
	if c.Ingests > 1 && (c.NATSURL != "" || c.Mode != ModeInproc && c.Mode != ModeBaseline) {
		p.add("ingests %d: only mode inproc on the in-process stack runs more than one ingest node", c.Ingests)
	}
	if c.PublishConns < 0 || c.PublishConns > 64 {
		p.add("publish-conns %d: want 1 to 64, or 0 for ingest's automatic default", c.PublishConns)
	}
	if c.PublishConns > 1 && (c.NATSURL != "" || c.Ingests > 1) {
		p.add("publish-conns %d: only the in-process stack's one ingest node (no -nats, no -ingests) takes more than one", c.PublishConns)
	}
	if c.WHIPReadCoalesce != nil && (c.Mode != ModeWHIP || c.WHIP != "") {
		p.add("whip-read-coalesce %v: only mode whip's in-process endpoint (no -whip) takes it", *c.WHIPReadCoalesce)
	}
	if c.WorkerCapacity < 0 {
		p.add("worker-capacity %d: want 0 (auto) or positive", c.WorkerCapacity)
	}
	if c.Shards < 0 {
		p.add("shards %d: want 0 (one per CPU) or positive", c.Shards)
	}
	if c.Tick <= 0 || c.Tick > 20*time.Millisecond {
		p.add("tick %v: want (0, 20ms]", c.Tick)
	}
	if c.StartConcurrency < 1 {
		p.add("start-concurrency %d: want at least 1", c.StartConcurrency)
	}
	if c.Settle <= 0 {
		p.add("settle %v: want positive", c.Settle)
	}
	if c.Progress < 0 {
		p.add("progress %v: want 0 (off) or positive", c.Progress)
	}
	for _, pid := range c.PIDs {
		if pid <= 0 {
			p.add("pid %d: want a positive process id", pid)
		}
	}
}

// checkThresholds checks the pass/fail bars.
func (c *Config) checkThresholds(p *problems) {
	if c.MaxP99 < 0 {
		p.add("max-p99 %v: want 0 (unchecked) or positive", c.MaxP99)
	}
	if c.MaxP99Ratio < 0 || c.MaxP99Ratio > MaxP99RatioLimit {
		p.add("max-p99-ratio %v: want 0 (unchecked) or a ratio in (0, %d]; a larger bound cannot fail", c.MaxP99Ratio, MaxP99RatioLimit)
	}
	if c.MaxP99Ratio > 0 && !c.Baseline {
		p.add("max-p99-ratio needs the baseline phase (-baseline)")
	}
	if c.MaxRSSPerCall < 0 {
		p.add("max-rss-per-call %v: want 0 (unchecked) or KB per call", c.MaxRSSPerCall)
	}
	if c.MaxRSSPerCall > 0 && (!c.Baseline || c.Mode == ModeBaseline) {
		p.add("max-rss-per-call needs the baseline and callrouter phases (-baseline)")
	}
	if c.MaxRefused > 1 {
		p.add("max-refused %v: want a ratio in [0, 1] (negative: unchecked)", c.MaxRefused)
	}
	if c.MaxLoss > 1 {
		p.add("max-loss %v: want a ratio in [0, 1] (negative: unchecked)", c.MaxLoss)
	}
}

// checks reports whether any pass/fail threshold is set.
func (c *Config) checks() bool {
	return c.MaxLoss >= 0 || c.MaxP99 > 0 || c.MaxP99Ratio > 0 || c.MaxRefused >= 0 || c.MaxRSSPerCall > 0
}
