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

// batchedCall is implemented by call handles whose packets the shard playing them gathers and
// sends together (the SIP mode's shared RTP socket): the shard lends them its batches once and
// flushes them after every tick.
type batchedCall interface {
	useBatch(tx *rtpBatches)
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

// lateBuckets are the pacer's lateness histogram: how long after its due time each frame's
// packets were handed to the kernel (after the tick's batch went out), in lateStep buckets.
const (
	lateStep    = 100 * time.Microsecond
	lateBuckets = 1000 // the last one holds everything from 99.9 ms on
)

type pshard struct {
	p      *pacer
	mu     sync.Mutex
	inbox  []*stream
	active []*stream
	closed bool // guarded by mu: calls added from now on end at once
	stop   chan struct{}
	tx     rtpBatches // the shard goroutine's own

	lateMu sync.Mutex
	late   [lateBuckets]int64 // frames by lateness (lateStep buckets)
	dues   []int64            // due times of the frames sent in the current tick
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
			s.tx.flush()
			return
		case <-t.C:
		}
		s.mu.Lock()
		for _, st := range s.inbox {
			if bc, ok := st.h.(batchedCall); ok {
				bc.useBatch(&s.tx)
			}
		}
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
				s.dues = append(s.dues, st.due)
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
		s.tx.flush()
		s.recordLate()
		if n > 0 {
			s.p.sentFrames.Add(n)
			s.p.col.sentAt(wall, n)
		}
	}
}

// recordLate files the frames of this tick by how late their packets went out.
func (s *pshard) recordLate() {
	if len(s.dues) == 0 {
		return
	}
	now := s.p.now()
	s.lateMu.Lock()
	for _, d := range s.dues {
		s.late[min(max(now-d, 0)/int64(lateStep), lateBuckets-1)]++
	}
	s.lateMu.Unlock()
	s.dues = s.dues[:0]
}

// lateness returns the given quantiles (0..1) of how late frames went out, over every shard.
func (p *pacer) lateness(qs ...float64) []time.Duration {
	var h [lateBuckets]int64
	var total int64
	for _, s := range p.shards {
		s.lateMu.Lock()
		for i, n := range s.late {
			h[i] += n
			total += n
		}
		s.lateMu.Unlock()
	}
	out := make([]time.Duration, len(qs))
	for k, q := range qs {
		want, seen := int64(q*float64(total)), int64(0)
		for i, n := range h {
			seen += n
			if seen > want || i == lateBuckets-1 {
				out[k] = time.Duration(i+1) * lateStep // the bucket's upper bound
				break
			}
		}
	}
	return out
}

func (s *pshard) finish(st *stream) {
	st.h.End()
	s.p.col.sent(st.call, st.sent)
	st.done(st)
}
