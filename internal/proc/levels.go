package proc

import (
	"fmt"
	"math"

	"github.com/callrouter/callrouter/internal/frame"
)

func init() {
	Register("levels", func(o Options) (Processor, error) {
		if err := o.Only("meter_ms"); err != nil {
			return nil, err
		}
		ms, err := o.Int("meter_ms", 0)
		if err != nil {
			return nil, err
		}
		if ms < 0 || ms%20 != 0 || ms > 60000 {
			return nil, fmt.Errorf("option meter_ms=%d: want 0 (off) or a multiple of 20 up to 60000", ms)
		}
		return levelsProc{meterFrames: ms / 20}, nil
	})
}

// levelsProc measures each leg's loudness and clipping over the call, on the PCM at the codec's
// native rate, and publishes a "levels" event when the call stops. With meter_ms it also
// publishes a "level" event per leg every meter_ms of the leg's media (a live meter).
type levelsProc struct{ meterFrames int }

// Level is the body of the "level" event: one leg's loudness over the last meter_ms of media
// ending at MS (media time since the leg's first frame, sequence × 20).
type Level struct {
	Leg    uint8   `json:"leg"`
	Name   string  `json:"name"`
	MS     int64   `json:"ms"`
	RMSDB  float64 `json:"rms_dbfs"`
	PeakDB float64 `json:"peak_dbfs"`
}

// activeFloorDB is the frame level (RMS, dBFS) above which a frame counts towards ActiveDB.
const activeFloorDB = -50

// LegLevels is one leg's levels. Levels are dBFS (0 is a full-scale square wave; a full-scale
// sine is -3); -100 stands for digital silence.
type LegLevels struct {
	Leg            uint8   `json:"leg"`
	Name           string  `json:"name"`
	Frames         int     `json:"frames"`
	MeanDB         float64 `json:"mean_dbfs"`   // RMS over every frame
	ActiveDB       float64 `json:"active_dbfs"` // RMS over frames above -50 dBFS
	ActiveFrames   int     `json:"active_frames"`
	PeakDB         float64 `json:"peak_dbfs"` // largest sample
	LoudestFrameDB float64 `json:"loudest_frame_dbfs"`
	ClippedSamples int     `json:"clipped_samples"` // samples at the codec's full scale
	ClippedFrames  int     `json:"clipped_frames"`  // frames with 3 or more clipped samples
}

// Levels is the body of the "levels" event and the summary's "levels" section.
type Levels struct {
	Legs []LegLevels `json:"legs"`
}

type levelsLeg struct {
	energy, activeEnergy float64
	samples, activeN     int64
	peak                 int32
	loudest              float64 // mean square
	out                  LegLevels
	// the meter's window
	meterEnergy  float64
	meterSamples int64
	meterPeak    int32
	meterFrames  int
}

type levelsCall struct {
	c     Call
	sh    *Shared
	legs  []levelsLeg
	meter int // frames per "level" event; 0: none
}

func (p levelsProc) Start(c Call) (Handler, error) {
	l := &levelsCall{c: c, sh: c.Shared().Acquire(), legs: make([]levelsLeg, len(c.Spec().Legs)), meter: p.meterFrames}
	for i, leg := range c.Spec().Legs {
		l.legs[i].out = LegLevels{Leg: leg.Index, Name: leg.Name}
	}
	return l, nil
}

// clipLevel returns the magnitude at which a codec's decoded samples are at full scale.
func clipLevel(c frame.Codec) int32 {
	switch c {
	case frame.CodecPCMU:
		return 32124
	case frame.CodecPCMA:
		return 32256
	}
	return 32767
}

var activeFloor = 32768 * 32768 * math.Pow(10, activeFloorDB/10.0)

func (l *levelsCall) Frame(f *Frame) {
	pcm := l.sh.Media.PCM(f, 0)
	if int(f.Header.Leg) >= len(l.legs) {
		return
	}
	g := &l.legs[f.Header.Leg]
	if len(pcm) == 0 || f.Header.Codec == frame.CodecTelephoneEvent {
		l.tick(g, f, 0, 0, 0) // silence for the meter
		return
	}
	clip := clipLevel(f.Header.Codec)
	var e int64
	var peak int32
	clipped := 0
	for _, v := range pcm {
		s := int32(v)
		e += int64(s) * int64(s)
		if s < 0 {
			s = -s
		}
		peak = max(peak, s)
		if s >= clip {
			clipped++
		}
	}
	ms := float64(e) / float64(len(pcm))
	g.energy += float64(e)
	g.samples += int64(len(pcm))
	if ms > activeFloor {
		g.activeEnergy += float64(e)
		g.activeN += int64(len(pcm))
		g.out.ActiveFrames++
	}
	g.peak = max(g.peak, peak)
	g.loudest = max(g.loudest, ms)
	g.out.Frames++
	g.out.ClippedSamples += clipped
	if clipped >= 3 {
		g.out.ClippedFrames++
	}
	l.tick(g, f, float64(e), int64(len(pcm)), peak)
}

// tick adds a frame to the leg's meter window and publishes a "level" event when it is full.
func (l *levelsCall) tick(g *levelsLeg, f *Frame, energy float64, samples int64, peak int32) {
	if l.meter == 0 {
		return
	}
	g.meterEnergy += energy
	g.meterSamples += samples
	g.meterPeak = max(g.meterPeak, peak)
	if g.meterFrames++; g.meterFrames < l.meter {
		return
	}
	ev := Level{Leg: g.out.Leg, Name: g.out.Name, MS: (int64(f.Header.Seq) + 1) * 20, RMSDB: -100,
		PeakDB: dBFS(float64(g.meterPeak) * float64(g.meterPeak))}
	if g.meterSamples > 0 {
		ev.RMSDB = dBFS(g.meterEnergy / float64(g.meterSamples))
	}
	l.c.Emit("level", ev)
	g.meterEnergy, g.meterSamples, g.meterPeak, g.meterFrames = 0, 0, 0, 0
}

// dBFS converts a mean square to dBFS, with -100 for silence.
func dBFS(meanSquare float64) float64 {
	if meanSquare <= 0 {
		return -100
	}
	return math.Round(100*10*math.Log10(meanSquare/(32768*32768))) / 100
}

func (l *levelsCall) Stop(string) {
	out := Levels{Legs: make([]LegLevels, len(l.legs))}
	for i := range l.legs {
		g := &l.legs[i]
		o := g.out
		o.MeanDB, o.ActiveDB, o.PeakDB = -100, -100, -100
		if g.samples > 0 {
			o.MeanDB = dBFS(g.energy / float64(g.samples))
		}
		if g.activeN > 0 {
			o.ActiveDB = dBFS(g.activeEnergy / float64(g.activeN))
		}
		o.PeakDB = dBFS(float64(g.peak) * float64(g.peak))
		o.LoudestFrameDB = dBFS(g.loudest)
		out.Legs[i] = o
	}
	l.c.Emit("levels", out)
	l.sh.Put("levels", out)
	l.sh.Release()
}
