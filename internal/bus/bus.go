// Package bus is callrouter's one seam to Core NATS: connection options (URL, credentials, TLS,
// bounded reconnect buffer), JSON request-reply helpers, call events (the one publisher and a
// collector), and an embedded nats-server for the one-process mode and for tests.
package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/callrouter/callrouter/internal/trace"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/rs/zerolog"
)

// Conn is the NATS connection type every service uses.
type Conn = *nats.Conn

// Config says how to reach NATS.
type Config struct {
	URL       string // comma-separated server URLs
	Name      string // connection name shown in NATS monitoring
	CredsFile string // NATS credentials (JWT + nkey) file
	// NkeyFile is an nkey seed file (callrouter-auth writes one per identity). The connection
	// signs the server's nonce with it and takes its replies below InboxPrefix of its public
	// key, the only inbox its permissions let it subscribe.
	NkeyFile string
	// NkeySeed is NkeyFile's content held in memory (the one-process mode); not a flag.
	NkeySeed     []byte
	TLSCert      string // client certificate file
	TLSKey       string // client key file
	TLSCA        string // CA file to verify the servers
	ReconnectBuf int    // bytes buffered while reconnecting; beyond it publishes fail
	// WaitForServer makes Connect return at once when no server answers and keep trying in the
	// background (nats.RetryOnFailedConnect), as after a disconnect: the binaries start without
	// NATS and become ready when it comes. Subscriptions made before the first connection are
	// sent when it is made; publishes wait in the reconnect buffer. Without it Connect fails.
	WaitForServer bool
}

// DefaultConfig returns a Config for a local server.
func DefaultConfig() Config {
	return Config{URL: nats.DefaultURL, ReconnectBuf: 8 << 20}
}

// Validate reports the first bad field.
func (c *Config) Validate() error {
	if strings.TrimSpace(c.URL) == "" {
		return errors.New("bus: nats URL is empty")
	}
	if c.NkeyFile != "" && (c.CredsFile != "" || c.NkeySeed != nil) {
		return errors.New("bus: give one of an nkey file, an nkey seed and a credentials file")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("bus: TLS certificate and key must be given together")
	}
	if c.ReconnectBuf <= 0 {
		return fmt.Errorf("bus: reconnect buffer %d must be positive", c.ReconnectBuf)
	}
	return nil
}

// Connect opens a connection that reconnects forever, logs connection changes, and reports
// slow-consumer errors without closing.
func Connect(cfg Config, log zerolog.Logger) (*nats.Conn, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, 500*time.Millisecond),
		nats.ReconnectBufSize(cfg.ReconnectBuf),
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(3),
		nats.RetryOnFailedConnect(cfg.WaitForServer),
		nats.ConnectHandler(func(nc *nats.Conn) {
			log.Info().Str("server", nc.ConnectedUrlRedacted()).Msg("nats connected")
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil when the connection was closed on purpose
				log.Warn().Err(err).Msg("nats disconnected")
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info().Str("server", nc.ConnectedUrlRedacted()).Msg("nats reconnected")
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrSlowConsumer) {
				slowConsumerErrors.Add(1)
			}
			ev := log.Warn().Err(err)
			if sub != nil {
				ev = ev.Str("subject", sub.Subject)
			}
			ev.Msg("nats async error")
		}),
	}
	auth, err := cfg.AuthOptions()
	if err != nil {
		return nil, err
	}
	nc, err := nats.Connect(cfg.URL, append(opts, auth...)...)
	if err != nil {
		return nil, fmt.Errorf("bus: connect %s: %w", cfg.URL, err)
	}
	return nc, nil
}

// AuthOptions returns the nats.go options for the credentials and TLS of c (creds file, nkey,
// client certificate, CA), for a client that builds its own connection around them (the load
// tester's plain clients).
func (c Config) AuthOptions() ([]nats.Option, error) {
	var opts []nats.Option
	if c.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	}
	if c.NkeyFile != "" || c.NkeySeed != nil {
		o, err := nkeyOptions(c)
		if err != nil {
			return nil, err
		}
		opts = append(opts, o...)
	}
	if c.TLSCert != "" {
		opts = append(opts, nats.ClientCert(c.TLSCert, c.TLSKey))
	}
	if c.TLSCA != "" {
		opts = append(opts, nats.RootCAs(c.TLSCA))
	}
	return opts, nil
}

// InboxPrefix is the reply-subject prefix of the client whose nkey has public key pub. Permissions
// let each identity subscribe only below its own, so nobody reads another's replies.
func InboxPrefix(pub string) string { return "_INBOX." + pub }

func nkeyOptions(cfg Config) ([]nats.Option, error) {
	seed := cfg.NkeySeed
	if cfg.NkeyFile != "" {
		data, err := os.ReadFile(cfg.NkeyFile)
		if err != nil {
			return nil, fmt.Errorf("bus: nkey: %w", err)
		}
		kp, err := nkeys.ParseDecoratedNKey(data)
		if err != nil {
			return nil, fmt.Errorf("bus: nkey %s: %w", cfg.NkeyFile, err)
		}
		pub, err := kp.PublicKey()
		if err != nil {
			return nil, fmt.Errorf("bus: nkey %s: %w", cfg.NkeyFile, err)
		}
		// nats.go reads the file again on every (re)connection: a rotated key is picked up.
		o, err := nats.NkeyOptionFromSeed(cfg.NkeyFile)
		if err != nil {
			return nil, fmt.Errorf("bus: nkey %s: %w", cfg.NkeyFile, err)
		}
		return []nats.Option{o, nats.CustomInboxPrefix(InboxPrefix(pub))}, nil
	}
	kp, err := nkeys.FromSeed(seed)
	if err != nil {
		return nil, fmt.Errorf("bus: nkey seed: %w", err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("bus: nkey seed: %w", err)
	}
	return []nats.Option{nats.Nkey(pub, kp.Sign), nats.CustomInboxPrefix(InboxPrefix(pub))}, nil
}

// ErrNotConnected is returned by Connected while the connection is down, being made for the first
// time, or closed.
var ErrNotConnected = errors.New("bus: not connected to NATS")

// Connected reports nil when nc is connected to a server (draining counts: it still delivers), or
// ErrNotConnected naming the connection's state.
func Connected(nc *nats.Conn) error {
	if nc == nil {
		return ErrNotConnected
	}
	if nc.IsConnected() {
		return nil
	}
	return fmt.Errorf("%w (%s)", ErrNotConnected, strings.ToLower(nc.Status().String()))
}

// Request sends req as JSON and decodes the JSON reply into resp.
func Request(ctx context.Context, nc *nats.Conn, subject string, req, resp any) error {
	data, err := json.Marshal(req)
	if err != nil {
		return err
	}
	// The trace context of ctx's span, if any (call setup, when tracing is on), rides in headers.
	msg, err := nc.RequestMsgWithContext(ctx, &nats.Msg{Subject: subject, Data: data, Header: trace.Inject(ctx)})
	if err != nil {
		return err
	}
	if err := json.Unmarshal(msg.Data, resp); err != nil {
		return fmt.Errorf("bus: reply on %s: %w", subject, err)
	}
	return nil
}

// Respond answers msg with v as JSON; errors are ignored because the requester times out anyway.
func Respond(msg *nats.Msg, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		return
	}
	_ = msg.Respond(data)
}

// Publish publishes v as JSON.
func Publish(nc *nats.Conn, subject string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return nc.Publish(subject, data)
}
