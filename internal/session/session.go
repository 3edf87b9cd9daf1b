// Package session holds the identity of a call and its legs, the call's lifecycle states, and
// per-leg sequence progress: the vocabulary that ingest, router and workers share about a call.
package session

import (
	"fmt"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/subjects"
)

// MaxLegs is the most legs one call may have.
const MaxLegs = 8

// ID names one call: a tenant and a call token, both valid subject tokens.
type ID struct {
	Tenant string `json:"tenant"`
	Call   string `json:"call"`
}

// String returns "tenant/call".
func (id ID) String() string { return id.Tenant + "/" + id.Call }

// Validate checks that both parts are valid subject tokens.
func (id ID) Validate() error {
	if err := subjects.Check("tenant", id.Tenant); err != nil {
		return err
	}
	return subjects.Check("call", id.Call)
}

// Leg describes one audio leg of a call: its index in frame headers, its name in subjects, and its
// codec.
type Leg struct {
	Index uint8       `json:"index"`
	Name  string      `json:"name"`
	Codec frame.Codec `json:"codec"`
	Rate  uint32      `json:"rate"`
}

// Spec is everything needed to place and process a call.
type Spec struct {
	ID
	Legs []Leg             `json:"legs"`
	Meta map[string]string `json:"meta,omitempty"`
}

// Validate checks the call identity and legs.
func (s *Spec) Validate() error {
	if err := s.ID.Validate(); err != nil {
		return err
	}
	if len(s.Legs) == 0 || len(s.Legs) > MaxLegs {
		return fmt.Errorf("session: call %s has %d legs, want 1-%d", s.ID, len(s.Legs), MaxLegs)
	}
	seen := map[string]bool{}
	for i, l := range s.Legs {
		if int(l.Index) != i {
			return fmt.Errorf("session: call %s leg %d has index %d", s.ID, i, l.Index)
		}
		if err := subjects.Check("leg", l.Name); err != nil {
			return err
		}
		if seen[l.Name] {
			return fmt.Errorf("session: call %s has two legs named %q", s.ID, l.Name)
		}
		seen[l.Name] = true
		if l.Codec == frame.CodecNone || l.Codec.String() == "unknown" {
			return fmt.Errorf("session: call %s leg %s has no codec", s.ID, l.Name)
		}
		if l.Rate == 0 {
			return fmt.Errorf("session: call %s leg %s has no sample rate", s.ID, l.Name)
		}
	}
	return nil
}

// From values of a LegSeq.
const (
	// FromEpochStart asks for frames from the first one published at the current epoch.
	FromEpochStart int64 = -1
	// FromRingStart asks for every frame still in ingest's ring: the resume point is unknown, so
	// no gap is reported before the first frame returned.
	FromRingStart int64 = -2
)

// LegSeq is a per-leg sequence position. In progress reports Next is the next sequence number the
// reporter expects (one past the last it processed); in requests it is where to resume.
type LegSeq struct {
	Leg  uint8 `json:"leg"`
	Next int64 `json:"next"`
}
