package proc

import (
	"fmt"

	"github.com/callrouter/callrouter/internal/frame"
)

func init() {
	Register("dtmf", newDTMF)
}

func newDTMF(o Options) (Processor, error) {
	c := DefaultDTMFConfig()
	if err := o.Only("min_level_db", "max_forward_twist_db", "max_reverse_twist_db", "min_tone_ratio", "merge_window_ms"); err != nil {
		return nil, err
	}
	var err error
	for _, f := range []struct {
		key string
		v   *float64
	}{{"min_level_db", &c.MinLevelDB}, {"max_forward_twist_db", &c.MaxForwardTwist},
		{"max_reverse_twist_db", &c.MaxReverseTwist}, {"min_tone_ratio", &c.MinToneRatio}} {
		if *f.v, err = o.Float(f.key, *f.v); err != nil {
			return nil, err
		}
	}
	mw, err := o.Int("merge_window_ms", int(c.MergeWindowMS))
	if err != nil {
		return nil, err
	}
	c.MergeWindowMS = int64(mw)
	if c.MinLevelDB >= 0 || c.MinToneRatio <= 0 || c.MinToneRatio > 1 || c.MaxForwardTwist < 0 || c.MaxReverseTwist < 0 || c.MergeWindowMS < 0 {
		return nil, fmt.Errorf("dtmf: bad settings %+v", c)
	}
	return dtmfProc{cfg: c}, nil
}

type dtmfProc struct{ cfg DTMFConfig }

// Sources of a "dtmf" event.
const (
	DTMFInBand  = "inband"  // detected in the audio
	DTMFRFC4733 = "rfc4733" // a telephone-event from ingest
)

// DTMFEvent is the body of a "dtmf" event, published when a digit ends. MS is the media time of
// the digit's start since the call's first frame.
type DTMFEvent struct {
	Leg        uint8  `json:"leg"`
	Name       string `json:"name"`
	Digit      string `json:"digit"`
	MS         int64  `json:"ms"`
	DurationMS int64  `json:"duration_ms"`
	Source     string `json:"source"`
}

// DTMFSummary is the summary's "dtmf" section: each leg's digits in order.
type DTMFSummary struct {
	Legs []LegDigits `json:"legs"`
}

// LegDigits is one leg's digits.
type LegDigits struct {
	Leg    uint8  `json:"leg"`
	Name   string `json:"name"`
	Digits string `json:"digits"`
}

// maxDigits bounds the digits a leg keeps for the summary.
const maxDigits = 1024

type dtmfLeg struct {
	name    string
	g       *goertzel
	origin  int64  // media ms of the detector's sample 0
	nextSeq uint32 // expected next sequence; a jump resets the detector
	seen    bool
	// RFC 4733: the event in progress.
	evOn      bool
	evDone    bool
	evKey     uint32 // start media timestamp
	evDigit   byte
	evStartMS int64
	evDurMS   int64
	// The last event reported, so its repeated end packets are ignored.
	evReported bool
	evDoneKey  uint32
	// The last digit reported, for merging the two sources.
	last    DTMFEvent
	hasLast bool
	digits  []byte
}

type dtmfCall struct {
	cfg  DTMFConfig
	c    Call
	sh   *Shared
	legs []dtmfLeg
	leg  uint8 // leg being fed, for emitHit
}

func (p dtmfProc) Start(c Call) (Handler, error) {
	d := &dtmfCall{cfg: p.cfg, c: c, sh: c.Shared().Acquire(), legs: make([]dtmfLeg, len(c.Spec().Legs))}
	for i, l := range c.Spec().Legs {
		d.legs[i] = dtmfLeg{name: l.Name, g: newGoertzel(p.cfg)}
	}
	return d, nil
}

func (d *dtmfCall) Frame(f *Frame) {
	h := &f.Header
	if int(h.Leg) >= len(d.legs) {
		return
	}
	pcm := d.sh.Media.PCM(f, dtmfRate) // every frame, so the decoder and resampler keep state
	l := &d.legs[h.Leg]
	d.leg = h.Leg
	if !l.seen || h.Seq != l.nextSeq {
		l.g.reset(d.emitHit)
		l.origin, l.seen = frameMS(h.Seq), true
	}
	l.nextSeq = h.Seq + 1
	if h.Codec == frame.CodecTelephoneEvent {
		d.telephoneEvents(h, f.Payload, l)
	} else {
		d.endEvent(l)
	}
	l.g.feed(pcm, d.emitHit)
}

// telephoneEvents reads the records of a telephone-event frame (frame.TelephoneEvent).
func (d *dtmfCall) telephoneEvents(h *frame.Header, p []byte, l *dtmfLeg) {
	rate := int64(h.SampleRate)
	if rate <= 0 {
		rate = 8000
	}
	for i := 0; ; i++ {
		ev, ok := frame.TelephoneEventAt(p, i)
		if !ok {
			return
		}
		digit := frame.DTMFDigit(ev.Event)
		if digit == 0 {
			continue // RFC 4733 §3.2: only 0-15 are DTMF
		}
		if l.evReported && ev.Start == l.evDoneKey {
			continue // a repeated end packet (RFC 4733 §2.5.1.4) or a late update
		}
		if !l.evOn || ev.Start != l.evKey {
			d.endEvent(l)
			l.evOn, l.evDone, l.evKey, l.evDigit = true, false, ev.Start, digit
			l.evStartMS = int64(ev.Start) * 1000 / rate
		}
		l.evDurMS = max(l.evDurMS, int64(ev.DurationMS))
		if ev.End {
			d.endEvent(l)
		}
	}
}

// endEvent reports the RFC 4733 event in progress once.
func (d *dtmfCall) endEvent(l *dtmfLeg) {
	if l.evOn && !l.evDone {
		d.report(l, DTMFEvent{Leg: d.leg, Name: l.name, Digit: string(l.evDigit), MS: l.evStartMS, DurationMS: l.evDurMS, Source: DTMFRFC4733})
		l.evDone, l.evReported, l.evDoneKey = true, true, l.evKey
	}
	if l.evDone {
		l.evOn, l.evDurMS = false, 0
	}
}

func (d *dtmfCall) emitHit(hit dtmfHit) {
	l := &d.legs[d.leg]
	d.report(l, DTMFEvent{Leg: d.leg, Name: l.name, Digit: string(hit.digit), MS: l.origin + hit.start*1000/dtmfRate,
		DurationMS: (hit.end - hit.start) * 1000 / dtmfRate, Source: DTMFInBand})
}

// report publishes a digit unless the other source already reported the same digit at
// overlapping time (within the merge window).
func (d *dtmfCall) report(l *dtmfLeg, ev DTMFEvent) {
	if p := l.last; l.hasLast && p.Digit == ev.Digit && p.Source != ev.Source {
		w := d.cfg.MergeWindowMS
		if ev.MS <= p.MS+p.DurationMS+w && ev.MS+ev.DurationMS+w >= p.MS {
			return
		}
	}
	l.last, l.hasLast = ev, true
	if len(l.digits) < maxDigits {
		l.digits = append(l.digits, ev.Digit[0])
	}
	d.c.Emit("dtmf", ev)
}

func (d *dtmfCall) Stop(string) {
	sum := DTMFSummary{Legs: make([]LegDigits, len(d.legs))}
	for i := range d.legs {
		l := &d.legs[i]
		d.leg = uint8(i)
		l.g.flush(d.emitHit)
		d.endEvent(l)
		sum.Legs[i] = LegDigits{Leg: uint8(i), Name: l.name, Digits: string(l.digits)}
	}
	d.sh.Put("dtmf", sum)
	d.sh.Release()
}
