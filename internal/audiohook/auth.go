package audiohook

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Header names of the upgrade request.
const (
	hdrAPIKey      = "X-Api-Key"
	hdrOrg         = "Audiohook-Organization-Id"
	hdrSession     = "Audiohook-Session-Id"
	hdrCorrelation = "Audiohook-Correlation-Id"
	hdrSig         = "Signature"
	hdrSigInput    = "Signature-Input"
)

// requiredComponents are the components a signature must cover.
var requiredComponents = []string{"@request-target", "@authority", "audiohook-organization-id", "audiohook-session-id",
	"audiohook-correlation-id", "x-api-key"}

// minNonce is the shortest nonce accepted.
const minNonce = 22

// errAuth is every authentication failure the client sees; the reason is logged only.
var errAuth = errors.New("audiohook: unauthorized")

// sigParams is a parsed Signature-Input member.
type sigParams struct {
	label      string
	components []string
	params     [][2]string // name, serialized value, in order
	keyID      string
	nonce      string
	alg        string
	created    int64
	expires    int64 // 0: none
}

// authenticator checks upgrade requests against the keys and remembers recent nonces, so a
// captured request cannot be replayed while its signature is young enough to pass.
type authenticator struct {
	keys   map[string]Key
	maxAge time.Duration
	skew   time.Duration
	decoy  []byte // an unknown key is checked against this, so both take as long

	mu     sync.Mutex
	nonces map[string]int64 // nonce → Unix seconds after which it may be forgotten
}

// maxNonces bounds the replay cache: past it new signatures are refused until old ones expire.
const maxNonces = 1 << 17

func newAuthenticator(cfg *Config) *authenticator {
	decoy := make([]byte, 32)
	_, _ = rand.Read(decoy)
	return &authenticator{keys: cfg.Keys, maxAge: cfg.SignatureMaxAge, skew: cfg.ClockSkew, decoy: decoy, nonces: map[string]int64{}}
}

// check authenticates r at now and returns the key's tenant; the error says why not (for the log).
func (a *authenticator) check(r *http.Request, now time.Time) (string, error) {
	apiKey := r.Header.Get(hdrAPIKey)
	k, known := a.keys[apiKey]
	if apiKey == "" {
		return "", errors.New("no X-API-KEY")
	}
	input, sig := r.Header.Get(hdrSigInput), r.Header.Get(hdrSig)
	if input == "" && sig == "" {
		if known && len(k.Secret) == 0 {
			return k.Tenant, nil
		}
		return "", errors.New("unsigned request")
	}
	secret := k.Secret
	if !known || len(secret) == 0 {
		secret = a.decoy
	}
	p, err := parseSignatureInput(input)
	if err != nil {
		return "", err
	}
	want, err := parseSignature(sig, p.label)
	if err != nil {
		return "", err
	}
	base, err := signatureBase(r, p)
	if err != nil {
		return "", err
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(base))
	ok := hmac.Equal(mac.Sum(nil), want)
	switch {
	case !known:
		return "", errors.New("unknown API key")
	case len(k.Secret) == 0:
		return "", errors.New("signed request for a key without a secret")
	case !ok:
		return "", errors.New("signatures do not match")
	case p.alg != "" && p.alg != "hmac-sha256":
		return "", fmt.Errorf("algorithm %q", p.alg)
	case p.keyID != apiKey:
		return "", errors.New("keyid is not the X-API-KEY")
	case len(p.nonce) < minNonce:
		return "", errors.New("nonce missing or too short")
	case p.created == 0:
		return "", errors.New("no created parameter")
	case now.Unix()-p.created > int64(a.maxAge/time.Second):
		return "", errors.New("signature too old")
	case p.created-now.Unix() > int64(a.skew/time.Second):
		return "", errors.New("signature created in the future")
	case p.expires != 0 && now.Unix() > p.expires:
		return "", errors.New("signature expired")
	}
	for _, c := range requiredComponents {
		if !contains(p.components, c) {
			return "", fmt.Errorf("component %s not covered", c)
		}
	}
	if !a.fresh(p.nonce, now) {
		return "", errors.New("nonce replayed")
	}
	return k.Tenant, nil
}

// fresh records a nonce; false if it was seen while a signature carrying it could still pass.
func (a *authenticator) fresh(nonce string, now time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	t := now.Unix()
	if _, seen := a.nonces[nonce]; seen {
		return false
	}
	if len(a.nonces) >= maxNonces/2 {
		for n, until := range a.nonces {
			if until < t {
				delete(a.nonces, n)
			}
		}
	}
	if len(a.nonces) >= maxNonces {
		return false
	}
	a.nonces[nonce] = t + int64((a.maxAge+a.skew)/time.Second) + 1
	return true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// signatureBase builds the RFC 9421 signature base of r for p.
func signatureBase(r *http.Request, p *sigParams) (string, error) {
	var b strings.Builder
	for _, c := range p.components {
		var v string
		switch c {
		case "@request-target":
			v = r.URL.RequestURI()
		case "@authority":
			v = strings.ToLower(r.Host)
		case "@method":
			v = r.Method
		case "@path":
			v = r.URL.EscapedPath()
		default:
			if strings.HasPrefix(c, "@") {
				return "", fmt.Errorf("component %s not supported", c)
			}
			vals := r.Header.Values(c)
			if len(vals) == 0 {
				return "", fmt.Errorf("covered header %s missing", c)
			}
			for i := range vals {
				vals[i] = strings.TrimSpace(vals[i])
			}
			v = strings.Join(vals, ", ")
		}
		if strings.ContainsAny(v, "\r\n") {
			return "", errors.New("line break in a covered component")
		}
		fmt.Fprintf(&b, "%q: %s\n", c, v)
	}
	b.WriteString(`"@signature-params": `)
	b.WriteString(p.serialize())
	return b.String(), nil
}

func (p *sigParams) serialize() string {
	var b strings.Builder
	b.WriteByte('(')
	for i, c := range p.components {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.Quote(c))
	}
	b.WriteByte(')')
	for _, kv := range p.params {
		b.WriteByte(';')
		b.WriteString(kv[0])
		b.WriteByte('=')
		b.WriteString(kv[1])
	}
	return b.String()
}

// parseSignatureInput parses a Signature-Input header of exactly one member:
// label=("comp" ...);name="string";name=integer...
func parseSignatureInput(h string) (*sigParams, error) {
	h = strings.TrimSpace(h)
	if len(h) > 2048 {
		return nil, errors.New("Signature-Input too long")
	}
	label, rest, ok := strings.Cut(h, "=")
	if !ok || !validKey(label) || !strings.HasPrefix(rest, "(") {
		return nil, errors.New("malformed Signature-Input")
	}
	end := strings.IndexByte(rest, ')')
	if end < 0 {
		return nil, errors.New("malformed Signature-Input component list")
	}
	p := &sigParams{label: label}
	for _, f := range strings.Fields(rest[1:end]) {
		s, err := unquote(f)
		if err != nil || s == "" || len(p.components) >= 16 {
			return nil, errors.New("malformed covered component")
		}
		p.components = append(p.components, s)
	}
	rest = rest[end+1:]
	seen := map[string]bool{}
	for rest != "" {
		if rest[0] != ';' {
			return nil, errors.New("malformed signature parameters")
		}
		rest = rest[1:]
		var kv string
		kv, rest = nextParam(rest)
		name, val, ok := strings.Cut(kv, "=")
		if !ok || seen[name] {
			return nil, errors.New("malformed or repeated signature parameter")
		}
		seen[name] = true
		p.params = append(p.params, [2]string{name, val})
		switch name {
		case "keyid", "nonce", "alg":
			s, err := unquote(val)
			if err != nil {
				return nil, fmt.Errorf("signature parameter %s: %w", name, err)
			}
			switch name {
			case "keyid":
				p.keyID = s
			case "nonce":
				p.nonce = s
			default:
				p.alg = s
			}
		case "created", "expires":
			n, err := strconv.ParseInt(val, 10, 64)
			if err != nil || n <= 0 {
				return nil, fmt.Errorf("signature parameter %s is not a positive integer", name)
			}
			if name == "created" {
				p.created = n
			} else {
				p.expires = n
			}
		default:
			return nil, fmt.Errorf("signature parameter %q not allowed", name)
		}
	}
	return p, nil
}

// nextParam splits off one name=value signature parameter (the value a quoted string, whose ';'
// do not count, or a token).
func nextParam(s string) (kv, rest string) {
	inStr := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case inStr && c == '\\':
			i++
		case c == '"':
			inStr = !inStr
		case c == ';' && !inStr:
			return s[:i], s[i:]
		}
	}
	return s, ""
}

// parseSignature returns the bytes of the Signature member label=:base64:.
func parseSignature(h, label string) ([]byte, error) {
	l, v, ok := strings.Cut(strings.TrimSpace(h), "=")
	if !ok || l != label || len(v) < 2 || v[0] != ':' || v[len(v)-1] != ':' {
		return nil, errors.New("malformed Signature")
	}
	b, err := base64.StdEncoding.DecodeString(v[1 : len(v)-1])
	if err != nil || len(b) != sha256.Size {
		return nil, errors.New("malformed Signature value")
	}
	return b, nil
}

func validKey(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == '*') {
			return false
		}
	}
	return true
}

// unquote reads an sf-string: "..." with \" and \\ escapes, printable ASCII only.
func unquote(s string) (string, error) {
	if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' {
		return "", errors.New("not a quoted string")
	}
	var b strings.Builder
	for i := 1; i < len(s)-1; i++ {
		c := s[i]
		switch {
		case c == '\\':
			i++
			if i >= len(s)-1 || (s[i] != '"' && s[i] != '\\') {
				return "", errors.New("bad escape")
			}
			b.WriteByte(s[i])
		case c == '"' || c < 0x20 || c > 0x7e:
			return "", errors.New("bad character in string")
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}
