package ingest

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/rs/zerolog"
)

// leg is one leg's per-frame state and its replay ring. Everything a frame reads or writes
// comes first and together, in the Call itself for calls of up to two legs (Call.inline).
type leg struct {
	subject    string
	seq        uint32
	startSeq   uint32 // first sequence published at the current epoch
	samples    uint32 // per frame
	rate       uint32
	codec      frame.Codec
	index      uint8
	epochStart bool // the next frame is the first of a new epoch
	ring       ring
}

// Call is one call owned by this ingest node. A transport feeds it 20 ms payloads with Send and
// ends it with End; the call stamps sequence, media timestamp, capture time and epoch, keeps each
// leg's recent frames for replay, and publishes them on the leg's subject.
//
// A node sends frames for thousands of calls in turn, so a call's state has left the cache by
// its next frame: the fields a frame touches are laid out together, from pause (whose on field
// is its last) to the inline legs, and a frame touches no memory shared with other calls but the
// NATS connection (frames are counted per call and added to the metric by the heartbeat).
type Call struct {
	spec        session.Spec
	logEpoch    atomic.Uint32 // the epoch the call was first placed at, for its log (another goroutine may log the call while it is placed)
	maxEpoch    uint32        // highest epoch ever requested, so retries never reuse one; under mu
	placements  []wire.Placement
	placing     sync.Mutex   // one re-placement at a time
	replacing   atomic.Int32 // re-placements started and not finished; repeated notices wait for them
	done        chan struct{}
	endOnce     sync.Once
	pause       pauseState // a secure pause (pause.go); under mu
	mu          sync.Mutex // orders Send against epoch changes; guards the call's state
	epoch       uint32
	placed      time.Time // when the current placements were set (monotonic): Node.absence
	ended       bool
	lastMedia   int64 // capture time of the last frame, Unix nanoseconds
	unpublished int64 // frames published and not yet added to the frames metric
	n           *Node
	pub         *pubConn // the connection its frames and messages go on, chosen when it starts
	legs        []leg    // inline[:k] for a call of k <= 2 legs
	inline      [2]leg   // the legs of most calls, next to the call's state

	nudge atomic.Pointer[chan struct{}] // while a re-placement runs: later notices wake it (replace.go)
}

// callFields adds the call's tenant, id and first epoch to every event its logger writes. A
// hook rather than a With context: With copies the node's context into a new 500-byte buffer for
// every call (held for the call's life, twice over with the collector's headroom), while the
// hook costs a pointer and adds the fields only to the events actually written.
type callFields struct{ c *Call }

func (h callFields) Run(e *zerolog.Event, _ zerolog.Level, _ string) {
	e.Str("tenant", h.c.spec.Tenant).Str("call", h.c.spec.Call)
	if epoch := h.c.logEpoch.Load(); epoch > 0 {
		e.Uint32("epoch", epoch)
	}
}

// log returns the node's logger with the call's fields. It is made when something is logged (a
// few times in a call's life) rather than kept: a zerolog.Logger is about 100 bytes, which would
// push Call into a larger size class.
func (c *Call) log() *zerolog.Logger {
	l := c.n.log.Hook(callFields{c})
	return &l
}

// ID returns the call's identity.
func (c *Call) ID() session.ID { return c.spec.ID }

// Spec returns the call's spec.
func (c *Call) Spec() session.Spec { return c.spec }

// Done is closed when the call has ended.
func (c *Call) Done() <-chan struct{} { return c.done }

// Epoch returns the current epoch.
func (c *Call) Epoch() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.epoch
}

// Placements returns the current placements.
func (c *Call) Placements() []wire.Placement {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]wire.Placement(nil), c.placements...)
}

func samplesPerFrame(l session.Leg) uint32 { return l.Rate / 50 }

func nominalPayload(l session.Leg) int {
	switch l.Codec {
	case frame.CodecL16:
		return int(l.Rate/50) * 2
	case frame.CodecOpus:
		return 160
	default:
		return int(l.Rate / 50)
	}
}

// Send publishes one 20 ms payload on a leg, captured now.
func (c *Call) Send(legIdx int, payload []byte, flags frame.Flags) error {
	return c.SendAt(legIdx, payload, flags, time.Now())
}

// SendAt publishes one 20 ms payload on a leg with the given capture time.
func (c *Call) SendAt(legIdx int, payload []byte, flags frame.Flags, capture time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return ErrEnded
	}
	if legIdx < 0 || legIdx >= len(c.legs) {
		return ErrLeg
	}
	c.lastMedia = capture.UnixNano()
	return c.publishLocked(&c.legs[legIdx], payload, flags, capture)
}

func (c *Call) publishLocked(l *leg, payload []byte, flags frame.Flags, capture time.Time) error {
	if c.pause.on && flags&frame.FlagLast == 0 {
		payload, flags = nil, flags|frame.FlagPaused // withheld here, so neither the bus nor the ring has it
	}
	if l.epochStart {
		flags |= frame.FlagEpochStart
		l.epochStart = false
		l.startSeq = l.seq
	}
	h := frame.Header{Flags: flags, Codec: l.codec, Leg: l.index, SampleRate: l.rate, Epoch: c.epoch,
		Seq: l.seq, MediaTS: l.seq * l.samples, Capture: capture.UnixNano(), DurationUS: uint16(frame.Duration / time.Microsecond)}
	b, err := frame.Append(l.ring.slot(), &h, payload)
	if err != nil {
		c.n.m.badFrame.Inc()
		return err
	}
	l.seq++
	if c.n.paused.Load() {
		l.ring.put(b)
		return nil // Pause: captured and kept in the ring, lost on the way out
	}
	err = c.pub.nc.Publish(l.subject, b)
	l.ring.put(b) // kept whether or not it went out; put rewrites b's header, so after the publish
	if err != nil {
		c.n.m.publishErr.Inc()
		return err
	}
	c.unpublished++
	return nil
}

// countPublished adds the frames published since the last count to the frames metric. Must hold
// c.mu.
func (c *Call) countPublished() {
	if c.unpublished > 0 {
		c.n.m.published.Add(float64(c.unpublished))
		c.unpublished = 0
	}
}

// idle reports whether the call is placed and has had no media since before.
func (c *Call) idle(before int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.epoch > 0 && c.lastMedia < before
}

// End ends the call: a last frame on every leg, a call "end" event, and the call leaves the node.
func (c *Call) End(reason string) {
	c.endOnce.Do(func() {
		c.mu.Lock()
		c.ended = true
		now := time.Now()
		epoch := c.epoch
		if epoch > 0 { // a call still being placed has published nothing and no one holds it
			for i := range c.legs {
				_ = c.publishLocked(&c.legs[i], nil, frame.FlagLast, now)
			}
		}
		c.releaseRings()
		c.countPublished()
		c.mu.Unlock()
		if epoch > 0 {
			c.n.event(c, epoch, "end", map[string]string{"reason": reason})
		}
		c.n.remove(c)
		c.log().Info().Str("reason", reason).Msg("call ended")
		c.n.m.ended.WithLabelValues(reason).Inc()
		close(c.done)
	})
}

// setPlacement switches the call to a new epoch and placements; every leg's next frame is flagged
// as the epoch's first.
func (c *Call) setPlacement(epoch uint32, p []wire.Placement) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended || epoch <= c.epoch {
		return false
	}
	c.epoch = epoch
	c.placements = p
	c.placed = time.Now()
	for i := range c.legs {
		c.legs[i].epochStart = true
	}
	return true
}

// releaseRings gives the legs' ring memory back once the call has ended (a replay then finds
// nothing, as it would once the call has left the node). Must hold c.mu, with c.ended set.
func (c *Call) releaseRings() {
	for i := range c.legs {
		c.legs[i].ring.release()
	}
}

func (c *Call) nextEpoch() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.maxEpoch++
	return c.maxEpoch
}

// replay appends to dst the ring frames of a leg in [from, to), with the replayed flag set, as long
// as dst stays within limit bytes. It returns the sequence of the first frame left out when the
// limit cut the range short (more is then true). from == session.FromEpochStart means from the
// first frame of the current epoch; session.FromRingStart from the oldest frame in the ring.
func (c *Call) replay(dst []byte, r wire.LegRange, limit int) (out []byte, next uint32, more bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if int(r.Leg) >= len(c.legs) {
		return dst, 0, false
	}
	l := &c.legs[r.Leg]
	if c.ended {
		return dst, 0, false // its rings are released
	}
	from, to := r.From, r.To
	if from == session.FromRingStart {
		from = 0
	}
	if from == session.FromEpochStart {
		from = int64(l.startSeq)
		if l.epochStart {
			from = int64(l.seq)
		}
	}
	if to <= 0 {
		to = int64(l.seq)
	}
	lf := legFrame{codec: l.codec, index: l.index, rate: l.rate, samples: l.samples}
	l.ring.each(l.seq, from, to, func(seq uint32, k int) bool {
		if len(dst)+l.ring.size(k) > limit {
			next, more = seq, true
			return false
		}
		dst = l.ring.frame(dst, k, seq, lf, frame.FlagReplayed)
		return true
	})
	return dst, next, more
}
