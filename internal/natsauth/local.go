package natsauth

import (
	"fmt"
	"os"

	"github.com/nats-io/nats-server/v2/server"
)

// Local is the spec of the one-process mode and of tests: one identity per role (every ingest
// node, router replica and worker shares its role's), the given pools shared by every tenant,
// the given tenants' consumers, and the admin "local" (the event printer).
func Local(pools []string, tenants ...string) *Spec {
	s := &Spec{Ingest: &Nodes{Shared: true}, Router: &Nodes{Shared: true}, Workers: map[string]Nodes{}, Admins: []string{"local"}}
	for _, p := range pools {
		s.Pools = append(s.Pools, Pool{Name: p})
		s.Workers[p] = Nodes{Shared: true}
	}
	for _, t := range tenants {
		s.Tenants = append(s.Tenants, Tenant{Name: t})
	}
	return s
}

// Find returns the identity a node of a role uses: its own if the spec names it, else the one
// its role shares. pool is for workers, node is the tenant's name for RoleTenant and the admin's
// name for RoleAdmin.
func Find(ids []Identity, role, pool, node string) (Identity, bool) {
	var shared *Identity
	for i, id := range ids {
		if id.Role != role || role == RoleWorker && id.Pool != pool {
			continue
		}
		switch role {
		case RoleTenant:
			if id.Tenant == node {
				return id, true
			}
			continue
		case RoleAdmin:
			if id.Name == RoleAdmin+"-"+node {
				return id, true
			}
			continue
		}
		if id.Node == node {
			return id, true
		}
		if id.Node == "" {
			shared = &ids[i]
		}
	}
	if shared != nil {
		return *shared, true
	}
	return Identity{}, false
}

// Set is a spec's identities with their keys.
type Set struct {
	IDs  []Identity
	Keys Keys
}

// NewSet gives every identity of spec a fresh key held in memory.
func NewSet(spec *Spec) (*Set, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	ids := spec.Identities()
	k, err := NewKeys(ids)
	if err != nil {
		return nil, err
	}
	return &Set{IDs: ids, Keys: k}, nil
}

// Users returns the server users of the set (see Users).
func (s *Set) Users() ([]*server.NkeyUser, error) { return Users(s.IDs, s.Keys) }

// Seed returns the seed of the identity Find picks.
func (s *Set) Seed(role, pool, node string) ([]byte, error) {
	id, ok := Find(s.IDs, role, pool, node)
	if !ok {
		return nil, fmt.Errorf("natsauth: no %s identity for pool %q node %q", role, pool, node)
	}
	return s.Keys[id.Name], nil
}

// WriteKeys writes every seed of the set into dir (<name>.nk, mode 0600), so that tools such as
// the nats CLI (--nkey) can connect to a one-process callrouter as one of its identities.
func (s *Set) WriteKeys(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, id := range s.IDs {
		if err := os.WriteFile(KeyFile(dir, id.Name), append(append([]byte(nil), s.Keys[id.Name]...), '\n'), 0o600); err != nil {
			return err
		}
	}
	return nil
}
