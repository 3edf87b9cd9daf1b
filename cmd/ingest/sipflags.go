package main

import (
	"flag"
	"strings"

	"github.com/callrouter/callrouter/internal/cli"
	"github.com/callrouter/callrouter/internal/sip"
)

// SIPFlags registers the SIP source's flags and returns the config they fill, and the listen
// address (empty: SIP is off).
func SIPFlags(fs *flag.FlagSet) (*sip.Config, *string) {
	cfg := sip.DefaultConfig()
	listen := new(string)
	fs.StringVar(listen, "sip-listen", "", "SIP UDP+TCP listen address ip:port (empty disables SIP), e.g. 0.0.0.0:5060")
	fs.Var((*cli.List)(&cfg.Transports), "sip-transports", "SIP transports, comma-separated: udp,tcp")
	fs.StringVar(&cfg.TLSListen, "sip-tls-listen", "", "SIP over TLS (sips) listen address ip:port, e.g. 0.0.0.0:5061 (empty disables TLS)")
	fs.StringVar(&cfg.TLSCert, "sip-tls-cert", "", "PEM certificate chain of the SIP TLS listener (reloaded when it changes)")
	fs.StringVar(&cfg.TLSKey, "sip-tls-key", "", "PEM private key of the SIP TLS listener")
	fs.StringVar(&cfg.TLSClientCA, "sip-tls-client-ca", "", "PEM CA file: SIP TLS peers must present a certificate it signed (mutual TLS), and peers callrouter dials are verified against it")
	fs.StringVar(&cfg.AdvertiseIP, "sip-advertise-ip", "", "IP written into Contact and SDP (default: the listen IP)")
	fs.StringVar(&cfg.MediaIP, "sip-media-ip", "", "IP the RTP sockets bind to (default: the listen IP)")
	fs.IntVar(&cfg.RTPPortMin, "sip-rtp-port-min", cfg.RTPPortMin, "lowest RTP port")
	fs.IntVar(&cfg.RTPPortMax, "sip-rtp-port-max", cfg.RTPPortMax, "highest RTP port")
	fs.BoolVar(&cfg.RTPShared, "sip-rtp-shared", cfg.RTPShared, "one RTP port for every call (the lowest of the range), packets routed by the SDP-declared source and then SSRC; needs -sip-source-check addr")
	fs.DurationVar(&cfg.PortQuarantine, "sip-port-quarantine", cfg.PortQuarantine, "how long a released RTP port rests before reuse")
	fs.StringVar(&cfg.SourceCheck, "sip-source-check", cfg.SourceCheck, "RTP source check: addr (ip+port), ip, off")
	fs.DurationVar(&cfg.JitterWindow, "sip-jitter-window", cfg.JitterWindow, "how long a missing RTP packet is waited for")
	fs.DurationVar(&cfg.SilenceFill, "sip-silence-fill", cfg.SilenceFill, "RTP silence after which frames are gap-filled in real time")
	fs.DurationVar(&cfg.RTPTimeout, "sip-rtp-timeout", cfg.RTPTimeout, "end a call with no RTP for this long (0 disables)")
	fs.DurationVar(&cfg.MaxCallDuration, "sip-max-call-duration", cfg.MaxCallDuration, "end any call after this long (0 disables)")
	fs.DurationVar(&cfg.MinSessionExpires, "sip-min-se", cfg.MinSessionExpires, "smallest Session-Expires accepted (RFC 4028)")
	fs.IntVar(&cfg.MaxCalls, "sip-max-calls", cfg.MaxCalls, "calls at once on this node; past it INVITEs get 486")
	fs.StringVar(&cfg.SRTP, "sip-srtp", cfg.SRTP, "SRTP keyed with SDES (a=crypto): off (plain RTP only), optional (SRTP when offered), required (RTP/AVP offers get 488)")
	fs.Var((*cli.List)(&cfg.Codecs), "sip-codecs", "codecs in answer preference order: pcmu,pcma,g722")
	fs.StringVar(&cfg.TenantRule, "sip-tenant-rule", cfg.TenantRule, "tenant rule: static, ruri-user, header:<Name>, source, auth (the digest user's tenant)")
	fs.StringVar(&cfg.DefaultTenant, "sip-tenant", cfg.DefaultTenant, "tenant of the static rule, and the fallback")
	fs.Func("sip-tenant-by-source", "source rule map: cidr=tenant,cidr=tenant", func(s string) error {
		cfg.TenantBySource = map[string]string{}
		for _, kv := range strings.Split(s, ",") {
			if k, v, ok := strings.Cut(strings.TrimSpace(kv), "="); ok {
				cfg.TenantBySource[k] = v
			}
		}
		return nil
	})
	fs.Var((*cli.List)(&cfg.Tenants), "sip-tenants", "allow-list of tenants (empty allows any valid tenant)")
	fs.Var((*cli.List)(&cfg.HeaderMeta), "sip-header-meta", "SIP headers copied into call metadata, comma-separated")
	fs.StringVar(&cfg.LegName, "sip-leg-name", cfg.LegName, "leg name of a plain SIP call")
	fs.Var((*cli.List)(&cfg.SIPRECLegNames), "sip-siprec-legs", "SIPREC leg names in metadata participant order")
	fs.Var((*cli.List)(&cfg.AllowNets), "sip-allow", "allow-list of source networks (CIDR) for every SIP request, comma-separated; empty allows all (set it in production: your SBCs and trunks)")
	fs.Func("sip-auth-users", "digest users user:password:tenant,... (tenant * allows any tenant; empty disables auth). Set it through the environment (CALLROUTER_SIP_AUTH_USERS), not on the command line", func(s string) error {
		users, err := sip.ParseAuthUsers(s)
		cfg.AuthUsers = users
		return err
	})
	fs.StringVar(&cfg.DialogCheck, "sip-dialog-check", cfg.DialogCheck, "who may send BYE, re-INVITE, UPDATE, INFO in a dialog and CANCEL an INVITE: addr (the INVITE's transport and source IP, and over UDP its port), ip (transport and IP), off (any source on -sip-allow; behind SBC clusters)")
	fs.StringVar(&cfg.AuthRealm, "sip-auth-realm", cfg.AuthRealm, "digest realm")
	fs.Float64Var(&cfg.InviteRate, "sip-invite-rate", cfg.InviteRate, "new INVITEs per second from one source address (0: no bound); past it UDP INVITEs are dropped, TCP ones get 503")
	fs.IntVar(&cfg.InviteBurst, "sip-invite-burst", cfg.InviteBurst, "INVITEs one source address may send at once before -sip-invite-rate applies")
	fs.IntVar(&cfg.MaxTCPConns, "sip-max-tcp-conns", cfg.MaxTCPConns, "open SIP TCP connections at most (0: no bound)")
	fs.IntVar(&cfg.TCPConnsPerSource, "sip-tcp-conns-per-source", cfg.TCPConnsPerSource, "open SIP TCP connections from one source address (0: no bound)")
	fs.DurationVar(&cfg.TCPIdleTimeout, "sip-tcp-idle-timeout", cfg.TCPIdleTimeout, "close a SIP TCP connection that carries no message (keep-alives count) for this long")
	fs.DurationVar(&cfg.TCPMessageTimeout, "sip-tcp-message-timeout", cfg.TCPMessageTimeout, "how long one SIP message may take to arrive over TCP")
	fs.DurationVar(&cfg.DrainTimeout, "sip-drain-timeout", cfg.DrainTimeout, "on SIGTERM, how long calls may hang up before BYE")
	return &cfg, listen
}
