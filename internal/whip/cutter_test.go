package whip

import (
	"bytes"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/timeline"
	"github.com/google/go-cmp/cmp"
)

type out struct {
	payload []byte
	flags   frame.Flags
}

type rec struct{ got []out }

func (r *rec) emit(p []byte, f frame.Flags, _ time.Time) {
	r.got = append(r.got, out{append([]byte{}, p...), f})
}

// pkt is one packet to push: sequence, timestamp, payload, arrival in ms.
type pkt struct {
	seq uint16
	ts  uint32
	p   []byte
	ms  int64
}

func run(t *testing.T, c string, pkts []pkt, endMS int64) (*rec, Stats) {
	t.Helper()
	cd, _ := codecByName(c)
	r := &rec{}
	k := newCutter(cd, 40*time.Millisecond, 2*time.Second, r.emit)
	for _, p := range pkts {
		k.push(p.seq, p.ts, p.p, p.ms*1e6)
	}
	k.poll(endMS * 1e6)
	return r, k.Stats
}

func g711(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

// opus20 is a 20 ms CELT code-0 Opus packet with a marker byte.
func opus20(m byte) []byte { return []byte{0xF8, m, m} }

func TestCutterG711InOrder(t *testing.T) {
	var pkts []pkt
	for i := 0; i < 5; i++ {
		pkts = append(pkts, pkt{uint16(100 + i), uint32(8000 + 160*i), g711(byte(i), 160), int64(20 * i)})
	}
	r, st := run(t, "pcmu", pkts, 200)
	if len(r.got) != 5 {
		t.Fatalf("got %d frames, want 5", len(r.got))
	}
	for i, o := range r.got {
		if !bytes.Equal(o.payload, g711(byte(i), 160)) || o.flags != 0 {
			t.Errorf("frame %d: %v flags %v", i, o.payload[:4], o.flags)
		}
	}
	if diff := cmp.Diff(Stats{Packets: 5, Frames: 5}, st); diff != "" {
		t.Error(diff)
	}
}

func TestCutterG711Recut30ms(t *testing.T) {
	var pkts []pkt
	var sent []byte
	for i := 0; i < 8; i++ { // 8 × 30 ms = 240 ms = 12 frames
		p := make([]byte, 240)
		for j := range p {
			p[j] = byte(i*240 + j)
		}
		sent = append(sent, p...)
		pkts = append(pkts, pkt{uint16(i), uint32(240 * i), p, int64(30 * i)})
	}
	r, st := run(t, "pcma", pkts, 300)
	var got []byte
	for _, o := range r.got {
		if len(o.payload) != 160 || o.flags != 0 {
			t.Fatalf("frame of %d bytes, flags %v", len(o.payload), o.flags)
		}
		got = append(got, o.payload...)
	}
	if !bytes.Equal(got, sent) || st.Frames != 12 {
		t.Fatalf("re-cut audio differs: %d frames, %d of %d bytes", st.Frames, len(got), len(sent))
	}
}

func TestCutterReorderWithinWindow(t *testing.T) {
	pkts := []pkt{
		{0, 0, opus20(0), 0}, {2, 1920, opus20(2), 40}, {1, 960, opus20(1), 45}, {3, 2880, opus20(3), 60},
	}
	r, st := run(t, "opus", pkts, 100)
	for i, o := range r.got {
		if o.payload[1] != byte(i) || o.flags != 0 {
			t.Errorf("frame %d is packet %d, flags %v", i, o.payload[1], o.flags)
		}
	}
	if diff := cmp.Diff(Stats{Packets: 4, Frames: 4, Reordered: 1}, st); diff != "" {
		t.Error(diff)
	}
}

func TestCutterLossFilledAfterWindow(t *testing.T) {
	pkts := []pkt{{0, 0, opus20(0), 0}, {1, 960, opus20(1), 20}, {3, 2880, opus20(3), 60}, {4, 3840, opus20(4), 80},
		{5, 4800, opus20(5), 101}, // 101 - 60 > 40 ms: packet 2 is given up
		{2, 1920, opus20(2), 110}, // late
	}
	r, st := run(t, "opus", pkts, 200)
	want := []out{{opus20(0), 0}, {opus20(1), 0}, {[]byte{}, frame.FlagGapFilled}, {opus20(3), 0}, {opus20(4), 0}, {opus20(5), 0}}
	if diff := cmp.Diff(want, r.got, cmp.AllowUnexported(out{})); diff != "" {
		t.Error(diff)
	}
	if diff := cmp.Diff(Stats{Packets: 6, Frames: 6, Lost: 1, Late: 1, FilledLoss: 1}, st); diff != "" {
		t.Error(diff)
	}
}

func TestCutterPollReleasesAtDeadline(t *testing.T) {
	cd, _ := codecByName("pcmu")
	r := &rec{}
	k := newCutter(cd, 40*time.Millisecond, time.Second, r.emit)
	k.push(0, 0, g711(1, 160), 0)
	k.push(2, 320, g711(3, 160), 40e6)
	if next := k.poll(50e6); next != 80e6 || len(r.got) != 1 {
		t.Fatalf("poll at 50 ms: next %d, %d frames; want 80 ms, 1 frame", next, len(r.got))
	}
	if next := k.poll(80e6); next != 0 || len(r.got) != 3 || r.got[1].flags != frame.FlagGapFilled || r.got[2].payload[0] != 3 {
		t.Fatalf("poll at 80 ms: next %d, frames %+v", next, r.got)
	}
}

func TestCutterSilenceSuppressionIsNotLoss(t *testing.T) {
	// Consecutive sequence numbers, timestamp jumps 5 frames: DTX, four frames of silence.
	pkts := []pkt{{10, 0, opus20(0), 0}, {11, 960, opus20(1), 20}, {12, 960 * 6, opus20(2), 120}}
	r, st := run(t, "opus", pkts, 200)
	if len(r.got) != 7 {
		t.Fatalf("got %d frames, want 7", len(r.got))
	}
	for _, o := range r.got[2:6] {
		if !bytes.Equal(o.payload, opusSilence) || o.flags != 0 {
			t.Errorf("silence frame %v flags %v", o.payload, o.flags)
		}
	}
	if diff := cmp.Diff(Stats{Packets: 3, Frames: 7, FilledSilence: 4}, st); diff != "" {
		t.Error(diff)
	}
	// The same for G.711 silence suppression: μ-law silence, not gap-filled.
	pkts = []pkt{{0, 0, g711(1, 160), 0}, {1, 160 * 3, g711(2, 160), 60}}
	r, st = run(t, "pcmu", pkts, 100)
	if len(r.got) != 4 || !bytes.Equal(r.got[1].payload, g711(0xFF, 160)) || r.got[1].flags != 0 || st.FilledSilence != 2 {
		t.Fatalf("pcmu silence: %+v %+v", r.got, st)
	}
}

func TestCutterDuplicateAndWrap(t *testing.T) {
	pkts := []pkt{{65534, 0, opus20(0), 0}, {65535, 960, opus20(1), 20}, {65535, 960, opus20(1), 21}, {0, 1920, opus20(2), 40},
		{1, 2880, opus20(3), 60}}
	r, st := run(t, "opus", pkts, 100)
	if len(r.got) != 4 || st.Duplicates != 1 || st.Lost != 0 {
		t.Fatalf("frames %d, stats %+v", len(r.got), st)
	}
}

func TestCutterOpusSplitAndUnsupported(t *testing.T) {
	// Code 1: two 20 ms CELT frames of 2 bytes each → two code-0 packets.
	two := []byte{0xF8 | 1, 7, 7, 8, 8}
	// A 10 ms CELT packet (config 30): cannot be one 20 ms Opus packet.
	ten := []byte{30 << 3, 1, 2}
	pkts := []pkt{{0, 0, two, 0}, {1, 1920, ten, 40}, {2, 2400, opus20(9), 50}}
	r, st := run(t, "opus", pkts, 100)
	want := []out{{[]byte{0xF8, 7, 7}, 0}, {[]byte{0xF8, 8, 8}, 0}, {[]byte{}, frame.FlagGapFilled}, {opus20(9), 0}}
	if diff := cmp.Diff(want, r.got, cmp.AllowUnexported(out{})); diff != "" {
		t.Error(diff)
	}
	if st.Unsupported != 1 || st.FilledLoss != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestCutterJumpPastMaxFillIsReported(t *testing.T) {
	pkts := []pkt{{0, 0, g711(1, 160), 0}, {1, 160 + 8000*60, g711(2, 160), 20}}
	r, st := run(t, "pcmu", pkts, 100)
	if len(r.got) != 2 || st.Skipped != 3000 || st.Resyncs != 1 {
		t.Fatalf("frames %d, stats %+v", len(r.got), st)
	}
}

func TestCutterSequenceRestart(t *testing.T) {
	pkts := []pkt{{0, 0, opus20(0), 0}, {1, 960, opus20(1), 20}, {30000, 1920, opus20(2), 40}, {30001, 2880, opus20(3), 60}}
	r, st := run(t, "opus", pkts, 100)
	if len(r.got) != 4 || st.Resyncs != 1 || st.Lost != 0 {
		t.Fatalf("frames %d, stats %+v", len(r.got), st)
	}
}

func TestCutterZeroAllocs(t *testing.T) {
	cd, _ := codecByName("pcmu")
	n := 0
	k := newCutter(cd, 40*time.Millisecond, time.Second, func([]byte, frame.Flags, time.Time) { n++ })
	p := g711(1, 160)
	var seq uint16
	var now int64
	allocs := testing.AllocsPerRun(1000, func() {
		k.push(seq, uint32(seq)*160, p, now)
		seq++
		now += 20e6
	})
	if allocs != 0 || n == 0 {
		t.Fatalf("%v allocations per packet (%d frames)", allocs, n)
	}
}

func BenchmarkCutterOpus(b *testing.B) {
	cd, _ := codecByName("opus")
	k := newCutter(cd, 40*time.Millisecond, time.Second, func([]byte, frame.Flags, time.Time) {})
	p := make([]byte, 80)
	p[0] = 0xF8
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		k.push(uint16(i), uint32(i)*960, p, int64(i)*20e6)
	}
}

// FuzzCutter pushes arbitrary packets: every frame is well formed, one push makes at most
// timeline.MaxFramesPerPacket frames, and every frame emitted is counted.
func FuzzCutter(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 0xF8, 1, 0, 2, 0x01, 0x02})
	f.Add([]byte{0, 0, 0, 1, 0xF8, 0, 2, 0xFF, 0x41, 0xF8, 0, 3, 0xFF, 0x41, 0xF8, 0, 9, 0, 0x01, 0xF8})
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, name := range []string{"opus", "pcmu"} {
			cd, _ := codecByName(name)
			frames := 0
			k := newCutter(cd, 40*time.Millisecond, timeline.MaxFill, func(p []byte, fl frame.Flags, _ time.Time) {
				frames++
				if name == "pcmu" && len(p) != 160 {
					t.Fatalf("pcmu frame of %d bytes", len(p))
				}
				if name == "opus" && len(p) > 0 && !bytes.Equal(p, opusSilence) {
					var fr [maxOpusFrames][]byte
					if n, fs, err := parseOpus(p, &fr); err != nil || n*fs != 960 {
						t.Fatalf("opus frame %x: %d×%d, %v", p, n, fs, err)
					}
				}
			})
			var now int64
			d := data
			for len(d) >= 4 {
				seq := uint16(d[0])<<8 | uint16(d[1])
				ts := uint32(d[2]) * cd.samples / 4 * uint32(seq%7)
				if d[3]&0x40 != 0 { // jumps of up to the max fill and beyond
					ts = uint32(d[2]) * cd.samples * 3 * uint32(seq%7)
				}
				n := min(int(d[3])%64, len(d)-4)
				now += int64(d[3]%8) * 10e6
				before := frames
				k.push(seq, ts, d[4:4+n], now)
				if got := frames - before; got > timeline.MaxFramesPerPacket {
					t.Fatalf("one packet made %d frames, bound %d", got, timeline.MaxFramesPerPacket)
				}
				d = d[4+n:]
			}
			before := frames
			k.poll(now + 1e9)
			if got := frames - before; got > timeline.MaxFramesPerPacket {
				t.Fatalf("the last poll made %d frames", got)
			}
			if uint64(frames) != k.Frames {
				t.Fatalf("%d frames emitted, %d counted", frames, k.Frames)
			}
		}
	})
}

// TestCutterHeldBackPacketThenJumps is the attack on the reorder buffer: one packet is held
// back, so those after it wait; they are sent with timestamps each just under the max fill ahead
// of the one before, then one more packet forces them all out. Each alone is within the max
// fill, together they asked for 31 of them (about 15 000 frames) from one packet; now the
// fill one push can buy is bounded, and a 2^30 jump while packets wait re-anchors.
func TestCutterHeldBackPacketThenJumps(t *testing.T) {
	for _, name := range []string{"pcmu", "opus"} {
		t.Run(name, func(t *testing.T) {
			cd, _ := codecByName(name)
			frames := 0
			k := newCutter(cd, 40*time.Millisecond, 10*time.Second, func([]byte, frame.Flags, time.Time) { frames++ })
			p := g711(1, 160)
			if name == "opus" {
				p = opus20(1)
			}
			now := int64(0)
			push := func(seq uint16, ts uint32) int {
				before := frames
				k.push(seq, ts, p, now)
				return frames - before
			}
			push(0, 0)
			ts := cd.samples
			for seq := uint16(2); seq < reorderSlots+1; seq++ { // 1 is held back
				ts += 495 * cd.samples // 9.9 s ahead
				now += 1e6
				push(seq, ts)
			}
			now += 1e6
			if n := push(reorderSlots+1, ts+cd.samples); n > timeline.MaxFramesPerPacket {
				t.Fatalf("one packet made %d frames, bound %d", n, timeline.MaxFramesPerPacket)
			}
			// Hold back again, then a 2^30 jump while the next waits.
			now += 20e6
			seq := uint16(reorderSlots + 3)
			ts += 3 * cd.samples
			push(seq, ts)
			now += 20e6
			if n := push(seq+1, ts+1<<30); n > timeline.MaxFramesPerPacket {
				t.Fatalf("the jump made %d frames", n)
			}
			// The call keeps flowing: the held back packet is given up after the window, then
			// one frame per 20 ms packet.
			for i := uint16(2); i < 12; i++ {
				now += 20e6
				n := push(seq+i, ts+1<<30+uint32(i-1)*cd.samples)
				if n > 4 || (i > 2 && n != 1) {
					t.Fatalf("packet %d after the jump made %d frames", i, n)
				}
			}
			if k.buffered != 0 {
				t.Errorf("%d packets still wait", k.buffered)
			}
			if k.Resyncs == 0 {
				t.Errorf("no resync counted: %+v", k.Stats)
			}
		})
	}
}
