package sip

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/emiago/sipgo/sip"
)

// Bounds on what a request may put into call metadata.
const (
	maxMetaValue   = 256
	maxMetaHeaders = 16
)

// policy holds the parsed access, tenant and metadata rules of a Config.
type policy struct {
	allow       []netip.Prefix
	bySource    []sourceTenant
	rule        string
	header      string
	defTenant   string
	tenants     []string
	headerMeta  []string // canonical lower-case names
	legName     string
	siprecNames []string
}

type sourceTenant struct {
	net    netip.Prefix
	tenant string
}

func newPolicy(c *Config) *policy {
	p := &policy{rule: c.TenantRule, defTenant: c.DefaultTenant, tenants: c.Tenants, legName: c.LegName, siprecNames: c.SIPRECLegNames}
	for _, n := range c.AllowNets {
		p.allow = append(p.allow, netip.MustParsePrefix(n).Masked())
	}
	for n, t := range c.TenantBySource {
		p.bySource = append(p.bySource, sourceTenant{netip.MustParsePrefix(n).Masked(), t})
	}
	// most specific network first
	slices.SortFunc(p.bySource, func(a, b sourceTenant) int { return b.net.Bits() - a.net.Bits() })
	if h, ok := strings.CutPrefix(c.TenantRule, "header:"); ok {
		p.rule, p.header = "header", h
	}
	for _, h := range c.HeaderMeta {
		p.headerMeta = append(p.headerMeta, strings.ToLower(h))
	}
	return p
}

func sourceAddr(req *sip.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(req.Source())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// allowed reports whether the request's source network is on the allow-list.
func (p *policy) allowed(src netip.Addr) bool {
	if len(p.allow) == 0 {
		return true
	}
	for _, n := range p.allow {
		if n.Contains(src) {
			return true
		}
	}
	return false
}

// tenant applies the tenant rule (user is the digest user, nil without auth); ok is false
// when the result is not a valid, allowed tenant.
func (p *policy) tenant(req *sip.Request, src netip.Addr, user *AuthUser) (string, bool) {
	t := ""
	switch p.rule {
	case "auth":
		if user != nil && user.Tenant != AnyTenant {
			t = user.Tenant
		}
	case "static":
		t = p.defTenant
	case "ruri-user":
		t = req.Recipient.User
	case "header":
		if h := req.GetHeader(p.header); h != nil {
			t = strings.TrimSpace(h.Value())
		}
	case "source":
		for _, s := range p.bySource {
			if s.net.Contains(src) {
				t = s.tenant
				break
			}
		}
	}
	if t == "" {
		t = p.defTenant
	}
	if !subjects.Valid(t) || (len(p.tenants) > 0 && !slices.Contains(p.tenants, t)) {
		return t, false
	}
	return t, true
}

func clip(s string) string {
	if len(s) > maxMetaValue {
		return s[:maxMetaValue]
	}
	return s
}

// metadata returns the call metadata of an INVITE: caller identity, Call-ID, request URI, source
// and the allow-listed headers.
func (p *policy) metadata(req *sip.Request) map[string]string {
	m := map[string]string{"sip.transport": strings.ToLower(req.Transport()), "sip.source": req.Source(),
		"sip.ruri": clip(req.Recipient.String())}
	if id := req.CallID(); id != nil {
		m["sip.call_id"] = clip(id.Value())
	}
	if f := req.From(); f != nil {
		m["sip.from"] = clip(f.Address.String())
		if f.DisplayName != "" {
			m["sip.from_name"] = clip(f.DisplayName)
		}
		if f.Address.User != "" {
			m["caller"] = clip(f.Address.User)
		}
	}
	if t := req.To(); t != nil {
		m["sip.to"] = clip(t.Address.String())
		if t.Address.User != "" {
			m["callee"] = clip(t.Address.User)
		}
	}
	for _, name := range []string{"P-Asserted-Identity", "Remote-Party-ID"} {
		if h := req.GetHeader(name); h != nil {
			m["sip."+strings.ToLower(name)] = clip(h.Value())
		}
	}
	n := 0
	for _, h := range p.headerMeta {
		if n >= maxMetaHeaders {
			break
		}
		if v := req.GetHeader(h); v != nil {
			m["sip.h."+h] = clip(v.Value())
			n++
		}
	}
	return m
}
