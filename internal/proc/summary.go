package proc

func init() {
	Register("summary", func(o Options) (Processor, error) {
		if err := o.Only(); err != nil {
			return nil, err
		}
		return summaryProc{}, nil
	})
}

// summaryProc publishes one "summary" event per call when the call's last analysis processor
// has stopped: the call's frames per leg plus the sections that the speech, dtmf, levels and
// record processors contributed (absent when the pool does not run them).
type summaryProc struct{}

// SummaryLeg is one leg in the summary.
type SummaryLeg struct {
	Leg          uint8  `json:"leg"`
	Name         string `json:"name"`
	Codec        string `json:"codec"`
	Frames       int    `json:"frames"`
	Lost         int    `json:"lost"`
	DecodeErrors int    `json:"decode_errors,omitempty"`
}

// Summary is the body of the "summary" event.
type Summary struct {
	Reason     string         `json:"reason"`
	DurationMS int64          `json:"duration_ms"` // media time from the first frame to the last
	Legs       []SummaryLeg   `json:"legs"`
	Speech     *SpeechSummary `json:"speech,omitempty"`
	DTMF       *DTMFSummary   `json:"dtmf,omitempty"`
	Levels     *Levels        `json:"levels,omitempty"`
	Recording  *Recording     `json:"recording,omitempty"`
}

type summaryCall struct {
	c          Call
	sh         *Shared
	out        Summary
	first, end int64
	started    bool
}

func (summaryProc) Start(c Call) (Handler, error) {
	s := &summaryCall{c: c, sh: c.Shared().Acquire()}
	for _, l := range c.Spec().Legs {
		s.out.Legs = append(s.out.Legs, SummaryLeg{Leg: l.Index, Name: l.Name, Codec: l.Codec.String()})
	}
	s.sh.OnLast(s.publish)
	return s, nil
}

func (s *summaryCall) Frame(f *Frame) {
	h := &f.Header
	if int(h.Leg) >= len(s.out.Legs) {
		return
	}
	s.out.Legs[h.Leg].Frames++
	t := frameMS(h.Seq)
	if !s.started || t < s.first {
		s.first, s.started = t, true
	}
	s.end = max(s.end, t+20)
}

func (s *summaryCall) Gap(g Gap) {
	if int(g.Leg) < len(s.out.Legs) {
		s.out.Legs[g.Leg].Lost += g.Count()
	}
}

func (s *summaryCall) Stop(reason string) {
	s.out.Reason = reason
	s.sh.Release()
}

// publish runs after every processor sharing the call has stopped.
func (s *summaryCall) publish() {
	if s.started {
		s.out.DurationMS = s.end - s.first
	}
	for i := range s.out.Legs {
		s.out.Legs[i].DecodeErrors = s.sh.Media.DecodeErrors(uint8(i))
	}
	if v, ok := s.sh.Section("speech").(SpeechSummary); ok {
		s.out.Speech = &v
	}
	if v, ok := s.sh.Section("dtmf").(DTMFSummary); ok {
		s.out.DTMF = &v
	}
	if v, ok := s.sh.Section("levels").(Levels); ok {
		s.out.Levels = &v
	}
	if v, ok := s.sh.Section("recording").(Recording); ok {
		s.out.Recording = &v
	}
	s.c.Emit("summary", s.out)
}
