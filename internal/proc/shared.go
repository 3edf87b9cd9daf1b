package proc

import "sync"

// Shared is per-call state that the analysis processors of one call share: the decoded audio
// (Media) and the sections that each processor contributes to the call summary. The first
// processor to start on a call creates it, each holds a reference from Start to Stop, and the
// last Stop runs the finishers (the "summary" processor's event), so the summary sees every
// section whatever the processors' order. All use happens on the call's goroutine, except the
// registry itself.
type Shared struct {
	Media *Media

	refs      int
	sections  map[string]any
	finishers []func()
}

var (
	sharedMu sync.Mutex
	shared   = map[Call]*Shared{}
)

// AcquireShared returns the call's shared state, creating it for the first processor, and takes
// a reference that the processor must give back with ReleaseShared in its Stop.
func AcquireShared(c Call) *Shared {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	s := shared[c]
	if s == nil {
		s = &Shared{Media: newMedia(c), sections: map[string]any{}}
		shared[c] = s
	}
	s.refs++
	return s
}

// ReleaseShared gives back a reference; the last one runs the finishers and forgets the call.
func ReleaseShared(c Call) {
	sharedMu.Lock()
	s := shared[c]
	if s == nil {
		sharedMu.Unlock()
		return
	}
	s.refs--
	last := s.refs == 0
	if last {
		delete(shared, c)
	}
	sharedMu.Unlock()
	if last {
		for _, f := range s.finishers {
			f()
		}
	}
}

// Put records a processor's contribution to the call summary under name.
func (s *Shared) Put(name string, v any) { s.sections[name] = v }

// Section returns what a processor recorded under name, or nil.
func (s *Shared) Section(name string) any { return s.sections[name] }

// OnLast registers f to run once, when the last processor of the call has stopped.
func (s *Shared) OnLast(f func()) { s.finishers = append(s.finishers, f) }
