package loadtest

import (
	"sync"
	"sync/atomic"
	"time"
)

// stream is one call being played by a pacer shard.
type stream struct {
	call    string
	h       Call
	rec     *Recording
	frames  int   // frames per leg to send
	i       int   // next frame
	due     int64 // monotonic nanoseconds (since the pacer's epoch) when frame i is due
	sent    []int64
	sendErr error
	done    func(*stream)
}

// ticker is implemented by call handles that have work between frames (the SIP mode's
// jittered packets); the shard calls it on every tick.
type ticker interface {
	tick(now time.Time)
}

// pacer plays many calls from a few goroutines: each shard owns a set of streams and, on every
// tick, sends the frames that have come due. One shard loop per core replaces a goroutine and a
// timer per leg; the calls' phases stay where their setup put them, so the load is spread across
// each 20 ms period rather than bursting on a shared boundary.
type pacer struct {
	period   time.Duration // one frame, divided by the speed factor
	tick     time.Duration
	maxBurst int // frames per stream per tick when catching up after a stall
	col      *Collector
	epoch    time.Time
	shards   []*pshard
	next     atomic.Uint32
	wg       sync.WaitGroup

	sentFrames atomic.Int64
	lateNS     atomic.Int64 // worst tick lateness seen, for the report
}

type pshard struct {
	p      *pacer
	mu     sync.Mutex
	inbox  []*stream
	active []*stream
	closed bool // guarded by mu: calls added from now on end at once
	stop   chan struct{}
}

func newPacer(shards int, period, tick time.Duration, col *Collector) *pacer {
	p := &pacer{period: period, tick: tick, maxBurst: 5, col: col, epoch: time.Now()}
	for i := 0; i < shards; i++ {
		p.shards = append(p.shards, &pshard{p: p, stop: make(chan struct{})})
	}
	return p
}

func (p *pacer) now() int64 { return int64(time.Since(p.epoch)) }

// start runs the shard loops.
func (p *pacer) start() {
	for _, s := range p.shards {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			s.run()
		}()
	}
}

// add hands a set-up call to a shard; its first frame is due now.
func (p *pacer) add(st *stream) {
	st.due = p.now()
	st.sent = make([]int64, len(st.rec.Frames))
	s := p.shards[int(p.next.Add(1))%len(p.shards)]
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.finish(st)
		return
	}
	s.inbox = append(s.inbox, st)
	s.mu.Unlock()
}

// stop ends every call still playing and waits for the shards.
func (p *pacer) stop() {
	for _, s := range p.shards {
		close(s.stop)
	}
	p.wg.Wait()
}

func (s *pshard) run() {
	t := time.NewTicker(s.p.tick)
	defer t.Stop()
	period := int64(s.p.period)
	var lastTick int64
	for {
		select {
		case <-s.stop:
			s.mu.Lock()
			s.active = append(s.active, s.inbox...)
			s.inbox = nil
			s.closed = true
			s.mu.Unlock()
			for _, st := range s.active {
				s.finish(st)
			}
			return
		case <-t.C:
		}
		s.mu.Lock()
		s.active = append(s.active, s.inbox...)
		s.inbox = s.inbox[:0]
		s.mu.Unlock()
		now := s.p.now()
		if lastTick > 0 {
			if late := now - lastTick - int64(s.p.tick); late > s.p.lateNS.Load() {
				s.p.lateNS.Store(late)
			}
		}
		lastTick = now
		var n int64
		wall := time.Now()
		for i := 0; i < len(s.active); {
			st := s.active[i]
			if tk, ok := st.h.(ticker); ok {
				tk.tick(wall)
			}
			for burst := 0; st.due <= now && st.i < st.frames && st.sendErr == nil && burst < s.p.maxBurst; burst++ {
				fi := st.i % st.rec.Len()
				for leg := range st.rec.Frames {
					if err := st.h.Send(leg, st.rec.Frames[leg][fi]); err != nil {
						st.sendErr = err
						break
					}
					st.sent[leg]++
					n++
				}
				st.i++
				st.due += period
			}
			if st.i >= st.frames || st.sendErr != nil {
				s.finish(st)
				last := len(s.active) - 1
				s.active[i] = s.active[last]
				s.active[last] = nil
				s.active = s.active[:last]
				continue
			}
			i++
		}
		if n > 0 {
			s.p.sentFrames.Add(n)
			s.p.col.sentAt(wall, n)
		}
	}
}

func (s *pshard) finish(st *stream) {
	st.h.End()
	s.p.col.sent(st.call, st.sent)
	st.done(st)
}
