package proc

// Shared is per-call state that the analysis processors of one call share: the decoded audio
// (Media) and the sections that each processor contributes to the call summary. The worker makes
// one per call (NewShared) and hands it to every processor through Call.Shared. Each processor
// that uses it takes a reference in Start (Acquire) and gives it back in Stop (Release); the last
// Release runs the finishers (the "summary" processor's event), so the summary sees every section
// whatever the processors' order. All use happens on the call's goroutine.
type Shared struct {
	Media *Media

	legs      int
	refs      int
	sections  map[string]any
	finishers []func()
}

// NewShared returns the shared state of a call with legs legs.
func NewShared(legs int) *Shared {
	return &Shared{Media: newMedia(legs), legs: legs, sections: map[string]any{}}
}

// Acquire takes a reference that the processor gives back with Release in its Stop.
func (s *Shared) Acquire() *Shared {
	s.refs++
	return s
}

// Release gives back a reference; the last one runs the finishers and starts the state afresh
// (a processor started on the call later sees none of it).
func (s *Shared) Release() {
	if s.refs == 0 {
		return
	}
	s.refs--
	if s.refs > 0 {
		return
	}
	for _, f := range s.finishers {
		f()
	}
	*s = *NewShared(s.legs)
}

// Put records a processor's contribution to the call summary under name.
func (s *Shared) Put(name string, v any) { s.sections[name] = v }

// Section returns what a processor recorded under name, or nil.
func (s *Shared) Section(name string) any { return s.sections[name] }

// OnLast registers f to run once, when the last processor of the call has stopped.
func (s *Shared) OnLast(f func()) { s.finishers = append(s.finishers, f) }
