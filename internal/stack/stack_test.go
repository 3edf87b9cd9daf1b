package stack

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/player"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/wav"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/rs/zerolog"
)

// seqLog records, per call and leg, every sequence number a worker processed, and where.
type seqLog struct {
	mu   sync.Mutex
	seqs map[string][]uint32 // "tenant/call/leg" → processed sequence numbers in order
	dups map[string]int
	gaps map[string][]proc.Gap
	who  map[string][]string // "worker@epoch/flags" per processed frame, for diagnosis
}

var recorded = &seqLog{seqs: map[string][]uint32{}, dups: map[string]int{}, gaps: map[string][]proc.Gap{}, who: map[string][]string{}}

func (l *seqLog) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seqs, l.dups, l.gaps, l.who = map[string][]uint32{}, map[string]int{}, map[string][]proc.Gap{}, map[string][]string{}
}

type seqProc struct{}
type seqCall struct{ c proc.Call }

func init() {
	proc.Register("testseq", func(proc.Options) (proc.Processor, error) { return seqProc{}, nil })
}

func (seqProc) Start(c proc.Call) (proc.Handler, error) { return &seqCall{c}, nil }

func key(c proc.Call, leg uint8) string { return fmt.Sprintf("%s/%d", c.Spec().ID, leg) }

func (s *seqCall) Frame(f *proc.Frame) {
	recorded.mu.Lock()
	k := key(s.c, f.Header.Leg)
	recorded.seqs[k] = append(recorded.seqs[k], f.Header.Seq)
	recorded.who[k] = append(recorded.who[k], fmt.Sprintf("%d:%s@%d/%d", f.Header.Seq, s.c.Worker(), s.c.Epoch(), f.Header.Flags))
	recorded.mu.Unlock()
}
func (s *seqCall) Duplicate(h *frame.Header) {
	recorded.mu.Lock()
	recorded.dups[key(s.c, h.Leg)]++
	recorded.mu.Unlock()
}
func (s *seqCall) Gap(g proc.Gap) {
	recorded.mu.Lock()
	recorded.gaps[key(s.c, g.Leg)] = append(recorded.gaps[key(s.c, g.Leg)], g)
	recorded.mu.Unlock()
}
func (s *seqCall) Stop(string) {}

// tone returns a two-leg 8 kHz PCM16 recording of n frames.
func tone(t testing.TB, n int) *filesrc.Recording {
	t.Helper()
	ch := make([][]byte, 2)
	for c := range ch {
		ch[c] = make([]byte, n*160*2)
		for i := 0; i < n*160; i++ {
			v := int16(8000 * math.Sin(2*math.Pi*float64(300*(c+1))*float64(i)/8000))
			binary.LittleEndian.PutUint16(ch[c][2*i:], uint16(v))
		}
	}
	r, err := filesrc.FromAudio(&wav.Audio{Format: wav.FormatPCM, Rate: 8000, BitsPerSample: 16, Channels: ch}, 0)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func testLogger(t testing.TB) zerolog.Logger {
	if v := os.Getenv("CALLROUTER_TEST_LOG"); v != "" {
		lvl, err := zerolog.ParseLevel(v)
		if err != nil || v == "1" {
			lvl = zerolog.DebugLevel
		}
		return zerolog.New(zerolog.NewTestWriter(t)).Level(lvl)
	}
	return zerolog.Nop()
}

func testWorkerConfig() worker.Config {
	wc := worker.DefaultConfig()
	wc.Processors = []string{"accounting", "testseq"}
	return wc
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// playCalls plays n concurrent calls of frames frames each and returns their errors.
func playCalls(ctx context.Context, t testing.TB, s *Stack, rec *filesrc.Recording, prefix string, n, frames int) []error {
	t.Helper()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = player.Play(ctx, s.Ingest, rec, rec.Spec("acme", fmt.Sprintf("%s-%d", prefix, i), nil), frames, 1)
		}()
	}
	wg.Wait()
	return errs
}

// checkComplete asserts that every leg of every call has seqs 0..frames-1 exactly once in order.
func checkComplete(t testing.TB, prefix string, n, legs, frames int) {
	t.Helper()
	recorded.mu.Lock()
	defer recorded.mu.Unlock()
	bad := 0
	for i := 0; i < n; i++ {
		for leg := 0; leg < legs; leg++ {
			k := fmt.Sprintf("acme/%s-%d/%d", prefix, i, leg)
			got := recorded.seqs[k]
			ok := len(got) == frames
			for j := 0; ok && j < frames; j++ {
				ok = got[j] == uint32(j)
			}
			if !ok || recorded.dups[k] != 0 || len(recorded.gaps[k]) != 0 {
				bad++
				if bad <= 5 {
					t.Errorf("%s: %d frames processed (want %d), %d dups, gaps %v", k, len(got), frames, recorded.dups[k], recorded.gaps[k])
				}
			}
		}
	}
}
