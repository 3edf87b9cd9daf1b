// Package tokenfile reads the files that map credentials to tenants (WHIP bearer tokens, Twilio
// stream tokens, AudioHook API keys): one "<tenant> <token> [fields…]" a line, blank lines and
// lines starting with '#' ignored. It checks the shape every such file shares (a valid tenant, a
// printable token of bounded length, no token twice) and leaves the meaning of further fields to
// its caller.
package tokenfile

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/callrouter/callrouter/internal/subjects"
)

// MaxToken bounds a token (and MaxLine a line).
const (
	MaxToken = 256
	MaxLine  = 4096
)

// Format is the shape of one file's lines.
type Format struct {
	// Usage is a line's shape, for errors: `<tenant> <token>`.
	Usage string
	// MinToken is the shortest token accepted.
	MinToken int
	// Fields is how many fields follow the token on every line.
	Fields int
}

// Entry is one line of a token file.
type Entry struct {
	Line   int // 1-based
	Tenant string
	Token  string
	Fields []string // the Format.Fields fields after the token
}

// Check reports whether tok is a token of min to MaxToken printable ASCII characters without
// spaces.
func Check(tok string, min int) error {
	if len(tok) < min || len(tok) > MaxToken {
		return fmt.Errorf("a token must be %d-%d characters long", min, MaxToken)
	}
	for i := 0; i < len(tok); i++ {
		if tok[i] <= ' ' || tok[i] >= 0x7f {
			return errors.New("a token must be printable ASCII without spaces")
		}
	}
	return nil
}

// Parse reads a token file of format f.
func Parse(r io.Reader, f Format) ([]Entry, error) {
	var out []Entry
	seen := map[string]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, MaxLine), MaxLine)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == '#' {
			continue
		}
		fs := strings.Fields(text)
		if len(fs) != 2+f.Fields {
			return nil, fmt.Errorf("line %d: want %q", line, f.Usage)
		}
		if err := subjects.Check("tenant", fs[0]); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		if err := Check(fs[1], f.MinToken); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		if seen[fs[1]] {
			return nil, fmt.Errorf("line %d: duplicate token", line)
		}
		seen[fs[1]] = true
		out = append(out, Entry{Line: line, Tenant: fs[0], Token: fs[1], Fields: fs[2:]})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// Tokens reads a file of "<tenant> <token>" lines into token → tenant.
func Tokens(r io.Reader, minToken int) (map[string]string, error) {
	es, err := Parse(r, Format{Usage: "<tenant> <token>", MinToken: minToken})
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(es))
	for _, e := range es {
		out[e.Token] = e.Tenant
	}
	return out, nil
}

// ReadFile parses the file at path.
func ReadFile(path string, f Format) ([]Entry, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	return Parse(fh, f)
}
