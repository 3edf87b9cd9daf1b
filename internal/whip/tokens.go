package whip

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/callrouter/callrouter/internal/tokenfile"
)

// Auth errors.
var (
	// ErrNoToken means the request carries no bearer token and no open tenant is configured.
	ErrNoToken = errors.New("whip: bearer token required")
	// ErrBadToken means the bearer token is unknown.
	ErrBadToken = errors.New("whip: unknown bearer token")
)

// minToken is the shortest bearer token accepted.
const minToken = 8

func checkToken(tok string) error {
	if err := tokenfile.Check(tok, minToken); err != nil {
		return fmt.Errorf("whip: %w", err)
	}
	return nil
}

// ParseTokens reads a token file (internal/tokenfile: one "<tenant> <token>" pair a line, blank
// lines and lines starting with '#' ignored). It returns token → tenant.
func ParseTokens(r io.Reader) (map[string]string, error) {
	m, err := tokenfile.Tokens(r, minToken)
	if err != nil {
		return nil, fmt.Errorf("whip: token file: %w", err)
	}
	return m, nil
}

// LoadTokens reads cfg.TokenFile, when set, into cfg.Tokens (file entries win).
func (c *Config) LoadTokens() error {
	if c.TokenFile == "" {
		return nil
	}
	f, err := os.Open(c.TokenFile)
	if err != nil {
		return err
	}
	defer f.Close()
	m, err := ParseTokens(f)
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
	if len(tok) == 0 || len(tok) > tokenfile.MaxToken {
		return "", ErrBadToken
	}
	if t, ok := a.tenants[sha256.Sum256([]byte(tok))]; ok {
		return t, nil
	}
	return "", ErrBadToken
}
