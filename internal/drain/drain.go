// Package drain tracks a transport's live sessions: it bounds them (per node and per tenant),
// refuses new ones once the transport drains, and waits for the live ones, with a deadline for
// them to end by themselves and without one once they have been told to end.
package drain

import (
	"errors"
	"sync"
	"time"
)

// Errors of Acquire.
var (
	// ErrDraining means the transport drains: it takes no new sessions.
	ErrDraining = errors.New("drain: draining: this node takes no new sessions")
	// ErrFull means the node's or the tenant's bound is reached.
	ErrFull = errors.New("drain: too many sessions")
)

// Sessions counts live sessions. The zero value is not usable: call New.
type Sessions struct {
	max, perTenant int
	gauge          func(live int)

	mu       sync.Mutex
	draining bool
	live     int
	tenants  map[string]int
	released chan struct{} // closed (and replaced) by every Release
}

// New returns a tracker of at most max sessions, perTenant of one tenant (0: no bound). gauge,
// when not nil, is told the number of live sessions on every change, under the tracker's lock.
func New(max, perTenant int, gauge func(live int)) *Sessions {
	return &Sessions{max: max, perTenant: perTenant, gauge: gauge, tenants: map[string]int{}, released: make(chan struct{})}
}

// Acquire takes a slot for a session of tenant ("": not known yet, see Tenant). Every slot taken
// must be given back with Release.
func (s *Sessions) Acquire(tenant string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.draining:
		return ErrDraining
	case s.live >= s.max || tenant != "" && s.tenantFull(tenant):
		return ErrFull
	}
	s.live++
	if tenant != "" {
		s.tenants[tenant]++
	}
	s.changed()
	return nil
}

// Tenant counts a live session acquired without a tenant against tenant; false (not counted)
// past the tenant's bound.
func (s *Sessions) Tenant(tenant string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tenantFull(tenant) {
		return false
	}
	s.tenants[tenant]++
	return true
}

func (s *Sessions) tenantFull(tenant string) bool {
	return s.perTenant > 0 && s.tenants[tenant] >= s.perTenant
}

// Release gives a slot back; tenant is the one it was counted against ("" for none).
func (s *Sessions) Release(tenant string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.live--
	if tenant != "" {
		if s.tenants[tenant]--; s.tenants[tenant] <= 0 {
			delete(s.tenants, tenant)
		}
	}
	s.changed()
	close(s.released)
	s.released = make(chan struct{})
}

func (s *Sessions) changed() {
	if s.gauge != nil {
		s.gauge(s.live)
	}
}

// Live returns the number of sessions holding a slot.
func (s *Sessions) Live() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.live
}

// Draining reports whether Drain was called.
func (s *Sessions) Draining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.draining
}

// Drain refuses new sessions from now on and waits until none is live or timeout has passed. It
// returns the number still live.
func (s *Sessions) Drain(timeout time.Duration) int {
	s.mu.Lock()
	s.draining = true
	s.mu.Unlock()
	if timeout <= 0 {
		return s.Live()
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	return s.wait(t.C)
}

// Wait waits until no session is live (the caller has told them to end).
func (s *Sessions) Wait() { s.wait(nil) }

// wait waits until no session is live or deadline fires; it returns the number still live.
func (s *Sessions) wait(deadline <-chan time.Time) int {
	for {
		s.mu.Lock()
		n, released := s.live, s.released
		s.mu.Unlock()
		if n == 0 {
			return 0
		}
		select {
		case <-released:
		case <-deadline:
			return s.Live()
		}
	}
}
