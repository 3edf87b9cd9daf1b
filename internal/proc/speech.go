package proc

import (
	"fmt"
	"math"
	"sort"
)

func init() {
	Register("speech", newSpeech)
}

// SpeechConfig tunes speech activity detection ("speech.threshold_db=-45" and so on).
type SpeechConfig struct {
	ThresholdDB float64 // a 20 ms frame louder than this (RMS, dBFS) is active...
	MarginDB    float64 // ...and louder than the leg's noise floor by this much
	HangoverMS  int     // speech stops after this much inactivity
	MinSpeechMS int     // activity shorter than this (clicks, pops) is not speech
}

// DefaultSpeechConfig returns the defaults documented in docs/processors.md.
func DefaultSpeechConfig() SpeechConfig {
	return SpeechConfig{ThresholdDB: -55, MarginDB: 12, HangoverMS: 300, MinSpeechMS: 60}
}

// Validate reports a bad setting.
func (c SpeechConfig) Validate() error {
	if c.ThresholdDB >= 0 || c.ThresholdDB < -90 {
		return fmt.Errorf("speech: threshold_db %v must be in [-90, 0)", c.ThresholdDB)
	}
	if c.HangoverMS < 0 || c.MinSpeechMS < 0 || c.MarginDB < 0 {
		return fmt.Errorf("speech: hangover_ms and min_speech_ms must not be negative")
	}
	return nil
}

func newSpeech(o Options) (Processor, error) {
	c := DefaultSpeechConfig()
	var err error
	if err = o.Only("threshold_db", "margin_db", "hangover_ms", "min_speech_ms"); err != nil {
		return nil, err
	}
	if c.MarginDB, err = o.Float("margin_db", c.MarginDB); err != nil {
		return nil, err
	}
	if c.ThresholdDB, err = o.Float("threshold_db", c.ThresholdDB); err != nil {
		return nil, err
	}
	if c.HangoverMS, err = o.Int("hangover_ms", c.HangoverMS); err != nil {
		return nil, err
	}
	if c.MinSpeechMS, err = o.Int("min_speech_ms", c.MinSpeechMS); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return speechProc{cfg: c}, nil
}

type speechProc struct{ cfg SpeechConfig }

// SpeechEvent is the body of a "speech" event: a leg started or stopped speaking. MS is media
// time since the call's first frame (sequence × 20 ms); a stop's MS is the end of the last
// active frame, published HangoverMS later.
type SpeechEvent struct {
	Leg        uint8  `json:"leg"`
	Name       string `json:"name"`
	State      string `json:"state"` // "start" or "stop"
	MS         int64  `json:"ms"`
	Seq        uint32 `json:"seq"`
	DurationMS int64  `json:"duration_ms,omitempty"` // on stop
}

// LegTalk is one leg's talk statistics.
type LegTalk struct {
	Leg       uint8  `json:"leg"`
	Name      string `json:"name"`
	TalkMS    int64  `json:"talk_ms"`
	Segments  int    `json:"segments"`
	LongestMS int64  `json:"longest_segment_ms"`
}

// SpeechSummary is the body of the "speech_summary" event and the summary's "speech" section.
type SpeechSummary struct {
	DurationMS       int64     `json:"duration_ms"`
	SilenceMS        int64     `json:"silence_ms"`         // no leg speaking
	LongestSilenceMS int64     `json:"longest_silence_ms"` // longest stretch with no leg speaking
	OvertalkMS       int64     `json:"overtalk_ms"`        // two or more legs speaking
	Legs             []LegTalk `json:"legs"`
}

type span struct{ from, to int64 } // ms

type speechLeg struct {
	name       string
	floor      float64 // noise floor, mean square: follows quiet frames down at once, rises slowly
	inSpeech   bool
	candidate  bool  // activity seen, not yet MinSpeechMS long
	start      int64 // ms of the first active frame of the current (candidate) segment
	startSeq   uint32
	lastActive int64 // ms of the end of the last active frame
	lastSeq    uint32
	segs       []span
}

type speechCall struct {
	cfg        SpeechConfig
	c          Call
	sh         *Shared
	thresh     float64 // mean square at the threshold
	margin     float64 // power ratio above the noise floor
	legs       []speechLeg
	first, end int64
	started    bool
}

// floorRise is the noise floor's rise per 20 ms frame (0.5 dB/s).
var floorRise = math.Pow(10, 0.01/10)

// maxSegments bounds the per-leg segment list of a call (a day of back-and-forth speech).
const maxSegments = 50000

func (p speechProc) Start(c Call) (Handler, error) {
	s := &speechCall{cfg: p.cfg, c: c, sh: c.Shared().Acquire(), legs: make([]speechLeg, len(c.Spec().Legs))}
	full := 32768.0
	s.thresh = full * full * math.Pow(10, p.cfg.ThresholdDB/10)
	s.margin = math.Pow(10, p.cfg.MarginDB/10)
	for i, l := range c.Spec().Legs {
		s.legs[i].name = l.Name
	}
	return s, nil
}

// meanSquare returns the mean of the squared samples.
func meanSquare(x []int16) float64 {
	if len(x) == 0 {
		return 0
	}
	var e int64
	for _, v := range x {
		e += int64(v) * int64(v)
	}
	return float64(e) / float64(len(x))
}

func (s *speechCall) Frame(f *Frame) {
	pcm := s.sh.Media.PCM(f, 8000)
	h := &f.Header
	if int(h.Leg) >= len(s.legs) {
		return
	}
	l := &s.legs[h.Leg]
	t := frameMS(h.Seq)
	if !s.started || t < s.first {
		s.first, s.started = t, true
	}
	s.end = max(s.end, t+20)
	// Inactivity since the last active frame (including lost frames) ends speech.
	if l.inSpeech && t-l.lastActive >= int64(s.cfg.HangoverMS) {
		s.stop(h.Leg, l)
	}
	if l.candidate && !l.inSpeech && t-l.lastActive >= int64(s.cfg.HangoverMS) {
		l.candidate = false
	}
	e := meanSquare(pcm)
	if e < l.floor {
		l.floor = e
	} else {
		l.floor = l.floor*floorRise + 1e-3 // +0.5 dB/s, and off digital silence
	}
	if e <= s.thresh || e <= l.floor*s.margin {
		return
	}
	if !l.inSpeech && !l.candidate {
		l.candidate, l.start, l.startSeq = true, t, h.Seq
	}
	l.lastActive, l.lastSeq = t+20, h.Seq
	if !l.inSpeech && l.lastActive-l.start >= int64(max(s.cfg.MinSpeechMS, 20)) {
		l.inSpeech, l.candidate = true, false
		s.c.Emit("speech", SpeechEvent{Leg: h.Leg, Name: l.name, State: "start", MS: l.start, Seq: l.startSeq})
	}
}

func (s *speechCall) stop(leg uint8, l *speechLeg) {
	l.inSpeech = false
	if len(l.segs) < maxSegments {
		l.segs = append(l.segs, span{l.start, l.lastActive})
	}
	s.c.Emit("speech", SpeechEvent{Leg: leg, Name: l.name, State: "stop", MS: l.lastActive, Seq: l.lastSeq,
		DurationMS: l.lastActive - l.start})
}

func (s *speechCall) Stop(string) {
	for i := range s.legs {
		if s.legs[i].inSpeech {
			s.stop(uint8(i), &s.legs[i])
		}
	}
	sum := s.summary()
	s.c.Emit("speech_summary", sum)
	s.sh.Put("speech", sum)
	s.sh.Release()
}

// summary computes talk, silence and overtalk by sweeping every leg's segments.
func (s *speechCall) summary() SpeechSummary {
	out := SpeechSummary{Legs: make([]LegTalk, len(s.legs))}
	type edge struct {
		t int64
		d int
	}
	var edges []edge
	for i, l := range s.legs {
		lt := LegTalk{Leg: uint8(i), Name: l.name, Segments: len(l.segs)}
		for _, g := range l.segs {
			lt.TalkMS += g.to - g.from
			lt.LongestMS = max(lt.LongestMS, g.to-g.from)
			edges = append(edges, edge{g.from, 1}, edge{g.to, -1})
		}
		out.Legs[i] = lt
	}
	if !s.started {
		return out
	}
	out.DurationMS = s.end - s.first
	sort.Slice(edges, func(i, j int) bool {
		if edges[i].t != edges[j].t {
			return edges[i].t < edges[j].t
		}
		return edges[i].d < edges[j].d // close before open at the same instant
	})
	active, prev := 0, s.first
	for _, e := range edges {
		if e.t > prev {
			d := e.t - prev
			switch {
			case active == 0:
				out.SilenceMS += d
				out.LongestSilenceMS = max(out.LongestSilenceMS, d)
			case active >= 2:
				out.OvertalkMS += d
			}
			prev = e.t
		}
		active += e.d
	}
	if s.end > prev {
		out.SilenceMS += s.end - prev
		out.LongestSilenceMS = max(out.LongestSilenceMS, s.end-prev)
	}
	return out
}
