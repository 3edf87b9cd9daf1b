package whip

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/callrouter/callrouter/internal/subjects"
)

// Auth errors.
var (
	// ErrNoToken means the request carries no bearer token and no open tenant is configured.
	ErrNoToken = errors.New("whip: bearer token required")
	// ErrBadToken means the bearer token is unknown.
	ErrBadToken = errors.New("whip: unknown bearer token")
)

// maxTokenLen bounds a bearer token.
const maxTokenLen = 256

func checkToken(tok string) error {
	if len(tok) < 8 || len(tok) > maxTokenLen {
		return fmt.Errorf("whip: a token must be 8-%d characters long", maxTokenLen)
	}
	for i := 0; i < len(tok); i++ {
		if tok[i] <= ' ' || tok[i] >= 0x7f {
			return errors.New("whip: a token must be printable ASCII without spaces")
		}
	}
	return nil
}

// ParseTokens reads a token file: one "<tenant> <token>" pair a line, blank lines and lines
// starting with '#' ignored. It returns token → tenant.
func ParseTokens(r io.Reader) (map[string]string, error) {
	out := map[string]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 4096)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == '#' {
			continue
		}
		f := strings.Fields(text)
		if len(f) != 2 {
			return nil, fmt.Errorf("whip: token file line %d: want \"<tenant> <token>\"", line)
		}
		if err := subjects.Check("tenant", f[0]); err != nil {
			return nil, fmt.Errorf("whip: token file line %d: %w", line, err)
		}
		if err := checkToken(f[1]); err != nil {
			return nil, fmt.Errorf("whip: token file line %d: %w", line, err)
		}
		if _, dup := out[f[1]]; dup {
			return nil, fmt.Errorf("whip: token file line %d: duplicate token", line)
		}
		out[f[1]] = f[0]
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("whip: token file: %w", err)
	}
	return out, nil
}

// LoadTokens reads cfg.TokenFile, when set, into cfg.Tokens (file entries win).
func (c *Config) LoadTokens() error {
	if c.TokenFile == "" {
		return nil
	}
	b, err := os.ReadFile(c.TokenFile)
	if err != nil {
		return err
	}
	m, err := ParseTokens(bytes.NewReader(b))
	if err != nil {
		return err
	}
	if c.Tokens == nil {
		c.Tokens = map[string]string{}
	}
	for tok, tenant := range m {
		c.Tokens[tok] = tenant
	}
	return nil
}

// authenticator maps bearer tokens to tenants. Tokens are kept as SHA-256 digests, so a lookup
// compares fixed-size digests and the table never holds a token in the clear.
type authenticator struct {
	tenants    map[[32]byte]string
	openTenant string
}

func newAuthenticator(tokens map[string]string, open string) *authenticator {
	a := &authenticator{tenants: make(map[[32]byte]string, len(tokens)), openTenant: open}
	for tok, tenant := range tokens {
		a.tenants[sha256.Sum256([]byte(tok))] = tenant
	}
	return a
}

// tenant returns the tenant of an Authorization header value.
func (a *authenticator) tenant(header string) (string, error) {
	if header == "" {
		if a.openTenant != "" {
			return a.openTenant, nil
		}
		return "", ErrNoToken
	}
	scheme, tok, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return "", ErrNoToken
	}
	tok = strings.TrimSpace(tok)
	if len(tok) == 0 || len(tok) > maxTokenLen {
		return "", ErrBadToken
	}
	if t, ok := a.tenants[sha256.Sum256([]byte(tok))]; ok {
		return t, nil
	}
	return "", ErrBadToken
}
