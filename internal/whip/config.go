package whip

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/timeline"
)

// Config configures the WHIP endpoint.
type Config struct {
	// Path is where the endpoint is mounted: POST Path creates a session, Path/session/<id> is a
	// session's URL and Path/session/<id>/events its event stream.
	Path string
	// UDPAddr is the one UDP socket every session's ICE, DTLS and SRTP use ("127.0.0.1:0" picks
	// a port).
	UDPAddr string
	// PublicIPs, when set, replace the socket's address in the host candidates of every answer
	// (NAT 1:1, e.g. a Kubernetes node or a cloud instance's public address).
	PublicIPs []string
	// Codecs lists the audio codecs accepted, in the server's order of preference ("opus",
	// "pcmu", "pcma"); the first one the offer also lists is the only one in the answer.
	Codecs []string
	// Tokens maps a bearer token to its tenant. TokenFile, when set, is read by LoadTokens.
	Tokens    map[string]string
	TokenFile string
	// OpenTenant, when set, lets requests without an Authorization header in as this tenant
	// (the one-process demo). A wrong token is still refused.
	OpenTenant string
	// AllowOrigin is the Access-Control-Allow-Origin answered to browsers ("*" allows any page).
	AllowOrigin string
	// MaxSessions bounds the sessions (calls being set up or running) on this node;
	// MaxSessionsPerTenant (0: no bound) bounds them per tenant, so one tenant (or one leaked
	// token) cannot take the whole node. Past either, POST gets 503.
	MaxSessions          int
	MaxSessionsPerTenant int
	// PostRate bounds POSTs per second from one source address (a token bucket of PostBurst);
	// past it POST gets 429 with Retry-After, before the token is even looked at. 0 disables it.
	// Behind a proxy every client shares the proxy's address: raise it or disable it there.
	PostRate  float64
	PostBurst int
	// MaxBody bounds the size of an SDP offer.
	MaxBody int64
	// RetryAfter is the Retry-After sent when the node itself refuses (session bound reached).
	RetryAfter time.Duration
	// SetupTimeout bounds a POST: building the answer and placing the call.
	SetupTimeout time.Duration
	// ConnectTimeout ends a session whose ICE and DTLS have not connected by then.
	ConnectTimeout time.Duration
	// MediaTimeout ends a connected call that has received no RTP for this long.
	MediaTimeout time.Duration
	// ICEKeepalive is how often a session sends its peer a consent check (a STUN binding request
	// on the ICE path, RFC 7675); a session that has had no authenticated packet from its peer
	// (check, answer, SRTP) for ICEFailed ends with reason "ice_failed".
	ICEFailed    time.Duration
	ICEKeepalive time.Duration
	// ReadCoalesce is how long the shared socket's reader lets datagrams gather after a batch
	// that did not fill before it reads again (Linux: recvmmsg batches): one wake-up per
	// ReadCoalesce on a busy socket instead of one per packet, at the price of up to that much
	// delay for every packet, ICE and DTLS handshakes included. 0 reads each as it comes.
	ReadCoalesce time.Duration
	// ReorderWindow is how long a packet waits for the ones missing before it; after that they
	// count as lost (about 40 ms: two frames).
	ReorderWindow time.Duration
	// MaxFill bounds how much missing media one discontinuity fills with synthesized frames; a
	// longer jump is reported (event "media", field skipped_frames) instead of filled.
	MaxFill time.Duration
	// Linger keeps an ended session's URL answering (DELETE, event stream) this long, so a page
	// sees the call's last events.
	Linger time.Duration
	// DrainTimeout is how long Run, once its context ends, keeps the sessions it has up for their
	// clients to hang up, refusing new ones with 503; then it ends the rest. 0 ends them at once.
	DrainTimeout time.Duration
	// EventBuffer is how many recent events a session keeps for event-stream clients that
	// connect late; SSEClients bounds the event-stream clients per session.
	EventBuffer int
	SSEClients  int
}

// maxReadCoalesce bounds Config.ReadCoalesce: a frame's worth would be audible delay.
const maxReadCoalesce = 10 * time.Millisecond

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Path:                 "/whip",
		UDPAddr:              "0.0.0.0:8443",
		Codecs:               []string{"opus", "pcmu", "pcma"},
		AllowOrigin:          "*",
		MaxSessions:          1000,
		MaxSessionsPerTenant: 500,
		PostRate:             20,
		PostBurst:            100,
		MaxBody:              64 << 10,
		RetryAfter:           2 * time.Second,
		SetupTimeout:         10 * time.Second,
		ConnectTimeout:       10 * time.Second,
		MediaTimeout:         10 * time.Second,
		ICEFailed:            10 * time.Second,
		ICEKeepalive:         2 * time.Second,
		ReadCoalesce:         time.Millisecond,
		ReorderWindow:        40 * time.Millisecond,
		MaxFill:              10 * time.Second,
		Linger:               30 * time.Second,
		EventBuffer:          256,
		SSEClients:           4,
	}
}

// Validate reports every bad field.
func (c *Config) Validate() error {
	var errs []error
	if !strings.HasPrefix(c.Path, "/") || strings.HasSuffix(c.Path, "/") {
		errs = append(errs, fmt.Errorf("whip: path %q must start with / and not end with /", c.Path))
	}
	if _, _, err := net.SplitHostPort(c.UDPAddr); err != nil {
		errs = append(errs, fmt.Errorf("whip: udp address %q: %w", c.UDPAddr, err))
	}
	for _, ip := range c.PublicIPs {
		if net.ParseIP(ip) == nil {
			errs = append(errs, fmt.Errorf("whip: public ip %q is not an IP address", ip))
		}
	}
	if len(c.Codecs) == 0 {
		errs = append(errs, errors.New("whip: at least one codec is needed"))
	}
	for _, name := range c.Codecs {
		if _, ok := codecByName(name); !ok {
			errs = append(errs, fmt.Errorf("whip: codec %q is not one of opus, pcmu, pcma", name))
		}
	}
	for tok, tenant := range c.Tokens {
		if err := checkToken(tok); err != nil {
			errs = append(errs, err)
		}
		if err := subjects.Check("tenant", tenant); err != nil {
			errs = append(errs, err)
		}
	}
	if c.OpenTenant != "" {
		if err := subjects.Check("open tenant", c.OpenTenant); err != nil {
			errs = append(errs, err)
		}
	}
	if c.MaxSessions < 1 {
		errs = append(errs, fmt.Errorf("whip: max sessions %d must be at least 1", c.MaxSessions))
	}
	if c.MaxSessionsPerTenant < 0 {
		errs = append(errs, fmt.Errorf("whip: max sessions per tenant %d must not be negative", c.MaxSessionsPerTenant))
	}
	if c.PostRate < 0 || (c.PostRate > 0 && c.PostBurst < 1) {
		errs = append(errs, fmt.Errorf("whip: post rate %v and burst %d: want a rate of 0 (no bound) or more with a burst of at least 1", c.PostRate, c.PostBurst))
	}
	if c.MaxBody < 1024 || c.MaxBody > 1<<20 {
		errs = append(errs, fmt.Errorf("whip: max body %d must be 1 KiB to 1 MiB", c.MaxBody))
	}
	for name, d := range map[string]time.Duration{"retry after": c.RetryAfter, "setup timeout": c.SetupTimeout,
		"connect timeout": c.ConnectTimeout, "media timeout": c.MediaTimeout,
		"ice failed": c.ICEFailed, "ice keepalive": c.ICEKeepalive, "linger": c.Linger} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("whip: %s %v must be positive", name, d))
		}
	}
	if c.ICEKeepalive > 0 && c.ICEFailed > 0 && c.ICEKeepalive > c.ICEFailed/2 {
		// Consent is judged on what came back: with fewer than two checks inside the window, one
		// lost check or answer ends a healthy call.
		errs = append(errs, fmt.Errorf("whip: -whip-ice-keepalive %v must be at most half of -whip-ice-failed %v, so that one lost consent check does not end a call", c.ICEKeepalive, c.ICEFailed))
	}
	if c.DrainTimeout < 0 {
		errs = append(errs, fmt.Errorf("whip: drain timeout %v must not be negative", c.DrainTimeout))
	}
	if c.ReadCoalesce < 0 || c.ReadCoalesce > maxReadCoalesce {
		errs = append(errs, fmt.Errorf("whip: -whip-read-coalesce %v must be 0 to %v (every packet waits up to that long)", c.ReadCoalesce, maxReadCoalesce))
	}
	if c.ReorderWindow < 0 || c.ReorderWindow > time.Second {
		errs = append(errs, fmt.Errorf("whip: reorder window %v must be 0 to 1s", c.ReorderWindow))
	}
	if c.MaxFill < frame.Duration || c.MaxFill > timeline.MaxFill {
		errs = append(errs, fmt.Errorf("whip: max fill %v must be one frame to %v (the media timeline's bound)", c.MaxFill, timeline.MaxFill))
	}
	if c.EventBuffer < 1 || c.SSEClients < 1 {
		errs = append(errs, fmt.Errorf("whip: event buffer %d and sse clients %d must be at least 1", c.EventBuffer, c.SSEClients))
	}
	return errors.Join(errs...)
}
