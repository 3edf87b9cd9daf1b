// Package natsauth is the one source of truth for callrouter's NATS identities: a small text file
// lists the tenants, the worker pools (shared, or dedicated to some tenants) and the nodes, and
// this package turns it into least-privilege permissions for every role, the server side (the
// nats.conf authorization block, or the users of an embedded server) and the client side (one
// nkey seed file per identity). docs/security.md explains the model.
//
// The file, one statement a line ('#' starts a comment):
//
//	tenant acme audio          # an event consumer identity for acme; "audio" lets it read audio too
//	tenant globex
//	pool default shared        # a worker pool every tenant's calls may use
//	pool pci acme              # a worker pool dedicated to acme
//	ingest ingest-1 ingest-2   # one identity per node; "ingest" alone: one for every node
//	router                     # one identity shared by every router replica
//	worker default w-1 w-2     # per-node worker identities of pool default
//	worker pci                 # one identity for every worker of pool pci
//	admin ops                  # operators: the whole admin API and every event
//
// Adding a tenant is one "tenant" line and one run of the generator (cmd/callrouter-auth): the
// keys of the identities that already exist are kept.
package natsauth

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/callrouter/callrouter/internal/subjects"
)

// ErrSpec is wrapped by every error about the identities file.
var ErrSpec = errors.New("natsauth: bad identities file")

// Tenant is one tenant and what its consumer identity may read.
type Tenant struct {
	Name  string
	Audio bool // the consumer may also subscribe audio.<tenant>.>
}

// Pool is one worker pool. Tenants is nil for a shared pool.
type Pool struct {
	Name    string
	Tenants []string
}

// Nodes lists the nodes of one role. Shared is true when one identity serves every node (a
// Kubernetes Deployment, where pods come and go); IDs then is empty.
type Nodes struct {
	Shared bool
	IDs    []string
}

// Spec is the parsed identities file.
type Spec struct {
	Tenants []Tenant
	Pools   []Pool
	Ingest  *Nodes           // nil: no ingest identity
	Router  *Nodes           // nil: no router identity
	Workers map[string]Nodes // by pool
	Admins  []string
}

// Parse reads an identities file.
func Parse(r io.Reader) (*Spec, error) {
	s := &Spec{Workers: map[string]Nodes{}}
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		text, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(text)
		if len(f) == 0 {
			continue
		}
		if err := s.add(f); err != nil {
			return nil, fmt.Errorf("%w: line %d: %v", ErrSpec, line, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return s, nil
}

// ParseFile reads an identities file from disk.
func ParseFile(path string) (*Spec, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

func (s *Spec) add(f []string) error {
	for _, tok := range f[1:] {
		if err := subjects.Check("name", tok); err != nil {
			return err
		}
	}
	nodes := func(ids []string) *Nodes {
		if len(ids) == 0 {
			return &Nodes{Shared: true}
		}
		return &Nodes{IDs: ids}
	}
	switch f[0] {
	case "tenant":
		if len(f) < 2 || len(f) > 3 || len(f) == 3 && f[2] != "audio" {
			return errors.New(`want "tenant <name> [audio]"`)
		}
		s.Tenants = append(s.Tenants, Tenant{Name: f[1], Audio: len(f) == 3})
	case "pool":
		if len(f) < 3 {
			return errors.New(`want "pool <name> shared" or "pool <name> <tenant>..."`)
		}
		p := Pool{Name: f[1]}
		if f[2] != "shared" || len(f) > 3 {
			p.Tenants = f[2:]
		}
		s.Pools = append(s.Pools, p)
	case "ingest", "router":
		dst := &s.Ingest
		if f[0] == "router" {
			dst = &s.Router
		}
		if *dst != nil {
			return fmt.Errorf("%s given twice", f[0])
		}
		*dst = nodes(f[1:])
	case "worker":
		if len(f) < 2 {
			return errors.New(`want "worker <pool> [id...]"`)
		}
		if _, dup := s.Workers[f[1]]; dup {
			return fmt.Errorf("workers of pool %s given twice", f[1])
		}
		s.Workers[f[1]] = *nodes(f[2:])
	case "admin":
		if len(f) < 2 {
			return errors.New(`want "admin <name>..."`)
		}
		s.Admins = append(s.Admins, f[1:]...)
	default:
		return fmt.Errorf("unknown statement %q (tenant, pool, ingest, router, worker, admin)", f[0])
	}
	return nil
}

// Validate checks the references between statements and that every identity name is unique.
func (s *Spec) Validate() error {
	bad := func(format string, a ...any) error { return fmt.Errorf("%w: "+format, append([]any{ErrSpec}, a...)...) }
	tenants := map[string]bool{}
	for _, t := range s.Tenants {
		if tenants[t.Name] {
			return bad("tenant %s given twice", t.Name)
		}
		tenants[t.Name] = true
	}
	pools := map[string]bool{}
	for _, p := range s.Pools {
		if pools[p.Name] {
			return bad("pool %s given twice", p.Name)
		}
		pools[p.Name] = true
		for _, t := range p.Tenants {
			if !tenants[t] {
				return bad("pool %s is dedicated to tenant %s, which has no tenant line", p.Name, t)
			}
		}
	}
	for pool := range s.Workers {
		if !pools[pool] {
			return bad("workers of pool %s: no pool line (pool %s shared, or pool %s <tenant>...)", pool, pool, pool)
		}
	}
	names := map[string]bool{}
	for _, id := range s.Identities() {
		if names[id.Name] {
			return bad("two identities are named %s", id.Name)
		}
		names[id.Name] = true
	}
	return nil
}

// Pool returns the pool named name, or nil.
func (s *Spec) Pool(name string) *Pool {
	i := slices.IndexFunc(s.Pools, func(p Pool) bool { return p.Name == name })
	if i < 0 {
		return nil
	}
	return &s.Pools[i]
}
