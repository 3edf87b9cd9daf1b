package loadtest

import (
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/filesrc"
)

// countHandle is a call that only counts what it is sent.
type countHandle struct {
	n     *atomic.Int64
	ended atomic.Bool
}

func (h *countHandle) Send(int, []byte) error { h.n.Add(1); return nil }
func (h *countHandle) End()                   { h.ended.Store(true) }

func silentRecording(legs, frames int) *Recording {
	r := &filesrc.Recording{Rate: 8000, Frames: make([][][]byte, legs)}
	for l := range r.Frames {
		for i := 0; i < frames; i++ {
			r.Frames[l] = append(r.Frames[l], make([]byte, 160))
		}
	}
	return &Recording{Name: "silence", Recording: r}
}

func TestPacerSendsEveryFrameAndEnds(t *testing.T) {
	col := newCollector("pacer", time.Now(), time.Second, 1)
	p := newPacer(2, 2*time.Millisecond, time.Millisecond, col) // 10× speed
	p.start()
	var sent atomic.Int64
	var done sync.WaitGroup
	hs := make([]*countHandle, 8)
	for i := range hs {
		hs[i] = &countHandle{n: &sent}
		done.Add(1)
		p.add(&stream{call: "c", h: hs[i], rec: silentRecording(2, 10), frames: 25, done: func(*stream) { done.Done() }})
	}
	done.Wait()
	p.stop()
	if got := sent.Load(); got != 8*2*25 {
		t.Errorf("sent %d frames, want %d", got, 8*2*25)
	}
	for i, h := range hs {
		if !h.ended.Load() {
			t.Errorf("call %d not ended", i)
		}
	}
	tot, _ := col.finish(0)
	if tot.Sent != 400 {
		t.Errorf("collector counted %d sent, want 400", tot.Sent)
	}
	// A call added after stop ends at once.
	var late sync.WaitGroup
	late.Add(1)
	h := &countHandle{n: &sent}
	p.add(&stream{call: "late", h: h, rec: silentRecording(1, 1), frames: 5, done: func(*stream) { late.Done() }})
	late.Wait()
	if !h.ended.Load() {
		t.Error("call added after stop was not ended")
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchPacing plays calls two-leg calls in real time for the given time with either the shared
// shard loops or a goroutine and ticker per leg, and reports CPU per frame sent.
func benchPacing(b *testing.B, calls int, perLeg bool) {
	const run = 2 * time.Second
	rec := silentRecording(2, 50)
	var sent atomic.Int64
	for range b.N {
		cpu0 := cpuTime()
		if perLeg {
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for c := 0; c < calls; c++ {
				h := &countHandle{n: &sent}
				for leg := 0; leg < 2; leg++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						t := time.NewTicker(20 * time.Millisecond)
						defer t.Stop()
						for i := 0; ; i++ {
							select {
							case <-stop:
								return
							case <-t.C:
								_ = h.Send(leg, rec.Frames[leg][i%rec.Len()])
							}
						}
					}()
				}
			}
			time.Sleep(run)
			close(stop)
			wg.Wait()
		} else {
			col := newCollector("bench", time.Now(), time.Second, 1)
			p := newPacer(2, 20*time.Millisecond, time.Millisecond, col)
			p.start()
			for c := 0; c < calls; c++ {
				p.add(&stream{call: "c", h: &countHandle{n: &sent}, rec: rec, frames: 1 << 30, done: func(*stream) {}})
				if c%(calls/20+1) == 0 {
					time.Sleep(time.Millisecond) // spread the calls' phases, as a ramp does
				}
			}
			time.Sleep(run)
			p.stop()
		}
		b.ReportMetric(float64(cpuTime()-cpu0)/float64(sent.Load()), "cpu-ns/frame")
		b.ReportMetric(float64(sent.Load())/run.Seconds(), "frames/s")
		sent.Store(0)
	}
}

func BenchmarkPacerShardLoops1000Calls(b *testing.B)      { benchPacing(b, 1000, false) }
func BenchmarkPacerGoroutinePerLeg1000Calls(b *testing.B) { benchPacing(b, 1000, true) }
