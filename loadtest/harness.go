package loadtest

import (
	"context"
	"time"

	"github.com/callrouter/callrouter/loadtest/account"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// Harness runs callrouter's own services in the tester's process; package inproc is the one
// implementation. Only the white-box parts of a run use it: ModeInproc (calls through an ingest
// node of the tester's), and a one-process callrouter for the other modes when no NATS URL is
// given. Everything else in this package is a black-box client of callrouter's wire contract.
type Harness func(ctx context.Context, cfg LocalConfig) (*Local, error)

// LocalConfig is what a run asks of the harness.
type LocalConfig struct {
	Mode           string // ModeInproc, ModeSIP, ModeWHIP, ModeAudioHook, ModeTwilio or ModeBaseline
	RunID          string // the run's id, which its call ids start with
	NATSURL        string // a remote callrouter's NATS: ModeInproc runs only an ingest node on it
	Tenant         string // tenant of the test calls
	Calls          int    // concurrent calls, to size the in-process ingests and workers
	Legs           int    // the most legs of any call
	Workers        int    // in-process workers
	Ingests        int    // ModeInproc on the in-process stack: ingest nodes, the calls spread over them
	PublishConns   int    // the in-process stack's ingest node: NATS connections its frames go on (0: ingest's automatic default)
	WorkerCapacity int    // calls per in-process worker (0: enough for Calls, plus a margin)
	// WHIPReadCoalesce is ModeWHIP's in-process endpoint's -whip-read-coalesce (nil: its default).
	WHIPReadCoalesce *time.Duration
	Secure           bool // TLS and per-role NATS permissions, as in production (Config.Secure)
	Log              zerolog.Logger
	StackLog         zerolog.Logger // the in-process services' log
}

// Local is what the harness started; Close stops all of it.
type Local struct {
	URL   string // the NATS that frames and events go over
	Stack bool   // a whole in-process callrouter; false: an ingest node on a remote NATS
	SIP   string // ModeSIP on an in-process stack: the SIP ingest's host:port
	WHIP  string // ModeWHIP on an in-process stack: the WHIP endpoint's URL
	// ModeAudioHook on an in-process stack: the AudioHook server's ws:// URL, an API key of the
	// run's tenant and its base64 client secret.
	AudioHook, AudioHookKey, AudioHookSecret string
	// ModeTwilio on an in-process stack: the Media Streams server's ws:// URL and a token of the
	// run's tenant.
	Twilio, TwilioToken string
	Ingest              Target // ModeInproc: the in-process ingest node
	// Publishers is how many NATS connections the in-process stack's ingest node publishes the
	// run's calls on (ingest's -nats-publish-conns; automatic by default), and so how many
	// publishers each raw phase gets, like for like; 0 counts as 1.
	Publishers int
	// Attach makes sink the in-process workers' probe sink for tenant's calls until detach; nil
	// when the workers are remote (they publish "loadtest" events instead).
	Attach func(tenant string, sink account.Sink) (detach func(), err error)
	// Options are what the tester's own connections need on this NATS (credentials, TLS);
	// with Secure they may publish and subscribe RawPrefix.> (the baseline) and read events.
	Options []nats.Option
	Close   func()
}

// BaselinePendingMsgs is the baseline subscribers' pending limit per call: the workers' default
// (worker.Config.PendingMsgs; a test of package inproc holds them equal), so that both sides
// drop alike under a stall.
const BaselinePendingMsgs = 500
