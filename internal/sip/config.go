package sip

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/callrouter/callrouter/internal/subjects"
)

// Source-address check modes for RTP (Config.SourceCheck).
const (
	SourceCheckAddr = "addr" // IP and port must match the negotiated address
	SourceCheckIP   = "ip"   // the IP must match; any port (peers behind port-rewriting NAT)
	SourceCheckOff  = "off"  // accept any source
)

// Dialog peer check modes (Config.DialogCheck).
const (
	// DialogCheckAddr: the same transport and source IP as the INVITE, and over UDP the same
	// source port (the peer's SIP socket).
	DialogCheckAddr = "addr"
	// DialogCheckIP: the same transport and source IP, any port.
	DialogCheckIP = "ip"
	// DialogCheckOff: any source (behind an SBC cluster whose nodes share dialogs); the
	// allow-list and, with auth on, the dialog's user still apply.
	DialogCheckOff = "off"
)

// AnyTenant as an AuthUser's Tenant lets the user start calls for any tenant the tenant rule
// gives.
const AnyTenant = "*"

// AuthUser is one digest user: its password, and the one tenant it may start calls for (or
// AnyTenant).
type AuthUser struct {
	Password string
	Tenant   string
}

// ParseAuthUsers parses "user:password:tenant" entries separated by commas (the password may
// hold ':'; the tenant may be AnyTenant). An empty string gives no users.
func ParseAuthUsers(s string) (map[string]AuthUser, error) {
	users := map[string]AuthUser{}
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e == "" {
			continue
		}
		user, rest, ok1 := strings.Cut(e, ":")
		i := strings.LastIndexByte(rest, ':')
		if !ok1 || i < 0 || user == "" || rest[:i] == "" || rest[i+1:] == "" {
			return nil, fmt.Errorf("sip: auth user %q: want user:password:tenant", user)
		}
		if _, dup := users[user]; dup {
			return nil, fmt.Errorf("sip: auth user %q given twice", user)
		}
		users[user] = AuthUser{Password: rest[:i], Tenant: rest[i+1:]}
	}
	return users, nil
}

// Config configures the SIP user agent server.
type Config struct {
	// Listen is the host:port for SIP over UDP and TCP. Port 0 picks a free port (tests).
	Listen string
	// Transports to serve: "udp", "tcp" or both.
	Transports []string
	// TLSListen is the host:port for SIP over TLS (sips, RFC 3261 section 26.2; 5061 by
	// convention); empty disables TLS. Port 0 picks a free port (tests).
	TLSListen string
	// TLSCert and TLSKey are the PEM files of the certificate chain and key the TLS listener
	// presents; they are reloaded when they change.
	TLSCert, TLSKey string
	// TLSClientCA, when set, is a PEM file of CAs: TLS peers must present a certificate one of
	// them signed (mutual TLS), and the TLS connections callrouter opens verify peers against
	// them instead of the system roots.
	TLSClientCA string
	// AdvertiseIP is the address written into Contact and SDP; empty uses Listen's host.
	AdvertiseIP string
	// MediaIP is the address the RTP sockets bind to; empty uses Listen's host.
	MediaIP string
	// RTPPortMin and RTPPortMax bound the RTP ports (even ports only are used).
	RTPPortMin, RTPPortMax int
	// RTPShared gives every call the one RTP port RTPPortMin (the lowest even port of the range)
	// instead of a port each, and routes its packets by the source the SDP offer declared, then
	// by SSRC (shared.go); legs whose offer declares no source take a port of the rest of the
	// range. It needs SourceCheck addr.
	RTPShared bool
	// PortQuarantine holds a released RTP port back before it is reused.
	PortQuarantine time.Duration
	// SourceCheck is one of SourceCheckAddr, SourceCheckIP, SourceCheckOff.
	SourceCheck string
	// JitterWindow is how long a missing RTP packet is waited for before it is gap-filled.
	JitterWindow time.Duration
	// SilenceFill is how long a stream may send nothing before its silence is gap-filled in real
	// time (a jitter spike shorter than this never inserts silence).
	SilenceFill time.Duration
	// RTPTimeout ends a call whose RTP stopped on every stream for this long (0 disables).
	RTPTimeout time.Duration
	// MaxCallDuration ends any call after this long (0 disables).
	MaxCallDuration time.Duration
	// MinSessionExpires is the smallest Session-Expires (RFC 4028) accepted; smaller gets 422.
	MinSessionExpires time.Duration
	// MaxCalls bounds calls on this user agent; past it INVITEs get 486 Busy Here.
	MaxCalls int
	// Codecs accepted, in preference order for answers: "pcmu", "pcma", "g722".
	Codecs []string
	// SRTP is the policy for SRTP keyed with SDES (RFC 4568): SRTPOff, SRTPOptional or
	// SRTPRequired.
	SRTP string

	// TenantRule chooses the tenant: "static" (DefaultTenant), "ruri-user" (request-URI user),
	// "header:<Name>" (a header's value) or "source" (TenantBySource).
	TenantRule    string
	DefaultTenant string
	// TenantBySource maps source networks (CIDR) to tenants for the "source" rule.
	TenantBySource map[string]string
	// Tenants, when not empty, is the allow-list of tenants; others get 403.
	Tenants []string

	// HeaderMeta is the allow-list of SIP headers copied into call metadata ("sip.h.<name>").
	HeaderMeta []string
	// LegName names the single leg of a plain SIP call.
	LegName string
	// SIPRECLegNames name SIPREC legs in the order of the participants in the metadata.
	SIPRECLegNames []string

	// AllowNets is the allow-list of source networks (CIDR) for every request; empty allows any
	// source.
	AllowNets []string
	// AuthUsers enables digest authentication (RFC 3261 section 22) of INVITEs and of the
	// requests within their dialogs, by user name; empty disables it.
	AuthUsers map[string]AuthUser
	// AuthRealm is the digest realm.
	AuthRealm string
	// DialogCheck is how in-dialog requests (BYE, re-INVITE, UPDATE, INFO) and CANCELs are
	// matched to the peer that sent the INVITE: DialogCheckAddr, DialogCheckIP or
	// DialogCheckOff.
	DialogCheck string

	// PlaceTimeout bounds placement of one new call (on top of the ingest node's own bound).
	PlaceTimeout time.Duration
	// DrainTimeout is how long Run waits for calls to hang up after its context ends before
	// hanging them up itself.
	DrainTimeout time.Duration
	// EventsPerCall bounds the DTMF and metadata events one call may publish per second.
	EventsPerCall int

	// InviteRate bounds new INVITEs per second from one source address (a token bucket of
	// InviteBurst); past it an INVITE over UDP is dropped unanswered (a source address can be
	// forged) and one over TCP gets 503 with Retry-After. 0 disables the bound.
	InviteRate  float64
	InviteBurst int
	// MaxTCPConns bounds open SIP TCP connections, TCPConnsPerSource those from one source
	// address (0: no bound); a connection past either is closed at once.
	MaxTCPConns       int
	TCPConnsPerSource int
	// TCPIdleTimeout closes a SIP TCP connection that carries no message (CRLF keep-alives
	// count) for this long; TCPMessageTimeout bounds how long one message may take to arrive
	// once begun (and the first one after the connection opens), and each write.
	TCPIdleTimeout    time.Duration
	TCPMessageTimeout time.Duration
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Listen:            "127.0.0.1:5060",
		Transports:        []string{"udp", "tcp"},
		RTPPortMin:        20000,
		RTPPortMax:        29999,
		PortQuarantine:    10 * time.Second,
		SourceCheck:       SourceCheckAddr,
		JitterWindow:      60 * time.Millisecond,
		SilenceFill:       400 * time.Millisecond,
		RTPTimeout:        30 * time.Second,
		MaxCallDuration:   4 * time.Hour,
		MinSessionExpires: 90 * time.Second,
		MaxCalls:          2000,
		Codecs:            []string{"pcmu", "pcma", "g722"},
		SRTP:              SRTPOptional,
		TenantRule:        "static",
		DefaultTenant:     "default",
		LegName:           "caller",
		SIPRECLegNames:    []string{"caller", "agent"},
		AuthRealm:         "callrouter",
		DialogCheck:       DialogCheckAddr,
		PlaceTimeout:      8 * time.Second,
		DrainTimeout:      30 * time.Second,
		EventsPerCall:     50,
		InviteRate:        50,
		InviteBurst:       100,
		MaxTCPConns:       4096,
		TCPConnsPerSource: 64,
		TCPIdleTimeout:    10 * time.Minute,
		TCPMessageTimeout: 10 * time.Second,
	}
}

// Validate reports every bad field.
func (c *Config) Validate() error {
	var errs []error
	bad := func(f string, a ...any) { errs = append(errs, fmt.Errorf("sip: "+f, a...)) }
	if _, err := netip.ParseAddrPort(c.Listen); err != nil {
		bad("listen %q: want ip:port: %v", c.Listen, err)
	}
	if len(c.Transports) == 0 {
		bad("at least one transport is needed")
	}
	for _, t := range c.Transports {
		if t != "udp" && t != "tcp" {
			bad("transport %q: want udp or tcp", t)
		}
	}
	if c.TLSListen != "" {
		if _, err := netip.ParseAddrPort(c.TLSListen); err != nil {
			bad("tls listen (-sip-tls-listen) %q: want ip:port: %v", c.TLSListen, err)
		}
		if c.TLSCert == "" || c.TLSKey == "" {
			bad("TLS needs a certificate and key (-sip-tls-cert, -sip-tls-key)")
		} else if _, _, err := tlsConfigs(c); err != nil {
			errs = append(errs, err)
		}
	} else if c.TLSCert != "" || c.TLSKey != "" || c.TLSClientCA != "" {
		bad("-sip-tls-cert, -sip-tls-key and -sip-tls-client-ca need -sip-tls-listen")
	}
	for name, ip := range map[string]string{"advertise ip": c.AdvertiseIP, "media ip": c.MediaIP} {
		if _, err := netip.ParseAddr(ip); ip != "" && err != nil {
			bad("%s %q: %v", name, ip, err)
		}
	}
	if c.RTPPortMin < 1024 || c.RTPPortMax > 65534 || c.RTPPortMax-c.RTPPortMin < 2 {
		bad("rtp ports %d-%d: want a range of at least 2 within 1024-65534", c.RTPPortMin, c.RTPPortMax)
	}
	switch c.SourceCheck {
	case SourceCheckAddr, SourceCheckIP, SourceCheckOff:
	default:
		bad("source check %q: want addr, ip or off", c.SourceCheck)
	}
	if c.RTPShared && c.SourceCheck != SourceCheckAddr {
		bad("-sip-rtp-shared routes packets by their source address and port: it needs -sip-source-check addr, not %q", c.SourceCheck)
	}
	if c.JitterWindow < 0 || c.JitterWindow > time.Second {
		bad("jitter window %v: want 0-1s", c.JitterWindow)
	}
	if c.SilenceFill < 0 || c.SilenceFill > 2*time.Second {
		bad("silence fill %v: want 0-2s", c.SilenceFill)
	}
	for name, d := range map[string]time.Duration{"port quarantine": c.PortQuarantine, "rtp timeout": c.RTPTimeout,
		"max call duration": c.MaxCallDuration, "min session expires": c.MinSessionExpires} {
		if d < 0 {
			bad("%s %v must not be negative", name, d)
		}
	}
	for name, d := range map[string]time.Duration{"place timeout": c.PlaceTimeout, "drain timeout": c.DrainTimeout} {
		if d <= 0 {
			bad("%s %v must be positive", name, d)
		}
	}
	if c.MaxCalls < 1 {
		bad("max calls %d must be at least 1", c.MaxCalls)
	}
	switch c.SRTP {
	case SRTPOff, SRTPOptional, SRTPRequired:
	default:
		bad("srtp (-sip-srtp) %q: want off, optional or required", c.SRTP)
	}
	if len(c.Codecs) == 0 {
		bad("at least one codec is needed")
	}
	for _, k := range c.Codecs {
		if _, ok := codecByName[k]; !ok {
			bad("codec %q: want pcmu, pcma or g722", k)
		}
	}
	switch {
	case c.TenantRule == "static", c.TenantRule == "ruri-user", c.TenantRule == "source":
	case c.TenantRule == "auth" && len(c.AuthUsers) > 0:
	case strings.HasPrefix(c.TenantRule, "header:") && len(c.TenantRule) > len("header:"):
	default:
		bad("tenant rule %q: want static, ruri-user, header:<Name>, source, or auth (with auth users)", c.TenantRule)
	}
	if err := subjects.Check("default tenant", c.DefaultTenant); err != nil {
		errs = append(errs, err)
	}
	for cidr, t := range c.TenantBySource {
		if _, err := netip.ParsePrefix(cidr); err != nil {
			bad("tenant source %q: %v", cidr, err)
		}
		if err := subjects.Check("tenant", t); err != nil {
			errs = append(errs, err)
		}
	}
	for _, t := range c.Tenants {
		if err := subjects.Check("tenant", t); err != nil {
			errs = append(errs, err)
		}
	}
	if err := subjects.Check("leg name", c.LegName); err != nil {
		errs = append(errs, err)
	}
	if len(c.SIPRECLegNames) < 2 {
		bad("at least two SIPREC leg names are needed")
	}
	for _, n := range c.SIPRECLegNames {
		if err := subjects.Check("SIPREC leg name", n); err != nil {
			errs = append(errs, err)
		}
	}
	for _, n := range c.AllowNets {
		if _, err := netip.ParsePrefix(n); err != nil {
			bad("allow net %q: %v", n, err)
		}
	}
	if len(c.AuthUsers) > 0 && c.AuthRealm == "" {
		bad("auth realm is needed with auth users")
	}
	for name, u := range c.AuthUsers {
		if name == "" || u.Password == "" || strings.ContainsAny(name, `"\`) {
			bad("auth user (-sip-auth-users) %q: want a name without quotes and a password", name)
		}
		if u.Tenant == AnyTenant {
			continue
		}
		if err := subjects.Check("tenant of auth user "+name, u.Tenant); err != nil {
			errs = append(errs, err)
		} else if len(c.Tenants) > 0 && !slices.Contains(c.Tenants, u.Tenant) {
			bad("auth user (-sip-auth-users) %q: tenant %q is not on the tenant allow-list (-sip-tenants)", name, u.Tenant)
		}
	}
	switch c.DialogCheck {
	case DialogCheckAddr, DialogCheckIP, DialogCheckOff:
	default:
		bad("dialog check (-sip-dialog-check) %q: want addr, ip or off", c.DialogCheck)
	}
	if c.InviteRate < 0 || (c.InviteRate > 0 && c.InviteBurst < 1) {
		bad("invite rate %v and burst %d: want a rate of 0 (no bound) or more with a burst of at least 1", c.InviteRate, c.InviteBurst)
	}
	if c.MaxTCPConns < 0 || c.TCPConnsPerSource < 0 {
		bad("tcp connection bounds %d and %d must not be negative", c.MaxTCPConns, c.TCPConnsPerSource)
	}
	if c.TCPIdleTimeout <= 0 || c.TCPMessageTimeout <= 0 {
		bad("tcp idle timeout %v and message timeout %v must be positive", c.TCPIdleTimeout, c.TCPMessageTimeout)
	}
	if c.EventsPerCall < 1 {
		bad("events per call %d must be at least 1", c.EventsPerCall)
	}
	return errors.Join(errs...)
}
