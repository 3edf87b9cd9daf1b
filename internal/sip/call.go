package sip

import (
	"bytes"
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/sdp"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/rs/zerolog"
)

// reasonError ends a call whose own code failed (a panic in its RTP read loop).
const reasonError = "error"

// callState is one SIP call: its dialog, its RTP streams and its ingest call.
type callState struct {
	s      *Server
	dlg    *sipgo.DialogServerSession
	peer   peer // who sent the INVITE: in-dialog requests must come from it
	log    zerolog.Logger
	tenant string
	start  time.Time
	call   *ingest.Call
	spec   session.Spec

	plans   []legPlan
	answers []sdp.Answer
	streams []*stream
	swg     sync.WaitGroup

	mu        sync.Mutex
	expires   time.Duration // session interval, 0 without a session timer
	refresher string
	refreshed time.Time
	rec       *recording
	version   uint64 // SDP answer version
	evWindow  time.Time
	evCount   int

	done       chan struct{}
	finishOnce sync.Once
	failed     chan struct{} // closed (failOnce) when a stream's read loop panicked: watch ends the call
	failOnce   sync.Once
	expired    chan string // the server's checker (watchCalls) sends why the call's time is up
}

// openStreams binds one RTP socket per leg, or with Config.RTPShared puts each leg whose offer
// declares its source on the shared port; the legs take the plans' order.
func (c *callState) openStreams(plans []legPlan, answers []sdp.Answer) error {
	c.plans, c.answers = plans, answers
	for i, p := range plans {
		st := &stream{leg: i, codec: p.codec, audioPT: p.audioPT, eventPT: p.eventPT, check: c.s.cfg.SourceCheck, m: c.s.m,
			hook: c.s.packetHook.Load()}
		st.setRemote(p.remote)
		if sh := c.s.shared; sh != nil && p.remote.Addr().IsValid() && !p.remote.Addr().IsUnspecified() && p.remote.Port() != 0 {
			st.tr = sh.add(st, p.remote)
		} else {
			conn, err := c.s.ports.open()
			if err != nil {
				return err
			}
			st.tr = conn
		}
		c.streams = append(c.streams, st)
		if p.crypto != nil {
			ctx, err := newSRTPContext(*p.crypto)
			if err != nil {
				return err
			}
			st.srtp.Store(ctx)
			st.key = p.crypto
		}
		st.cut = newCutter(p.codec.clock, c.s.cfg.JitterWindow, c.s.cfg.SilenceFill, p.codec.silence, st.emit)
		st.dtmf.report = func(e dtmfEvent) {
			pos, _ := st.cut.mediaPos(e.TS, e.SSRC)
			c.onDTMF(st, e, pos)
		}
		c.answers[p.media].Port = st.port()
	}
	return nil
}

// releaseStreams closes the sockets of streams that never started.
func (c *callState) releaseStreams() {
	for _, st := range c.streams {
		st.release(c.s.ports)
	}
	c.streams = nil
}

func (c *callState) startStreams() {
	for _, st := range c.streams {
		st.send = c.call.Send
		st.activate()
		c.swg.Add(1)
		go func() {
			defer c.swg.Done()
			// A panic in the read loop ends this call (reason "error"), never the process. The
			// loop's goroutine cannot end the call itself: finish waits for it.
			defer guard.Recover("sip_rtp", c.log, func(any) { c.failOnce.Do(func() { close(c.failed) }) })
			st.run()
		}()
	}
}

// answerSDP writes the SDP answer; each call bumps the version.
func (c *callState) answerSDP() []byte {
	c.mu.Lock()
	v := c.version
	c.version++
	answers := append([]sdp.Answer(nil), c.answers...)
	c.mu.Unlock()
	return sdp.Marshal(strconv.FormatInt(c.start.UnixNano()&0xffffffff, 10), v, c.s.advertise, answers)
}

// timerHeaders are the Session-Expires and Require headers of a 2xx (RFC 4028 section 9).
func (c *callState) timerHeaders() []sip.Header {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.expires == 0 {
		return nil
	}
	return []sip.Header{sip.NewHeader("Session-Expires", strconv.Itoa(int(c.expires/time.Second))+";refresher="+c.refresher),
		sip.NewHeader("Require", "timer")}
}

// refresh restarts the session timer from a refreshing request.
func (c *callState) refresh(req *sip.Request) {
	d, r, err := c.s.sessionTimer(req)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refreshed = time.Now()
	if err == nil && d > 0 {
		c.expires, c.refresher = d, r
	}
}

// reinvite applies a re-INVITE: the session timer is refreshed, new remote media addresses are
// taken, and new SIPREC metadata is merged and published as a "metadata" event.
func (c *callState) reinvite(req *sip.Request, off *sdp.Session, rec *recording) {
	c.refresh(req)
	if off != nil {
		for _, st := range c.streams {
			if p := c.plans[st.leg]; p.media < len(off.Media) {
				m := off.Media[p.media]
				if m.Conn.IsValid() && m.Port > 0 {
					st.setRemote(netipAddrPort(m.Conn, m.Port))
				}
				c.rekey(st, p.media, m.Crypto)
			}
		}
	}
	if rec == nil {
		return
	}
	c.mu.Lock()
	if c.rec == nil {
		c.rec = rec
	} else {
		c.rec.merge(rec)
	}
	c.mu.Unlock()
	c.publish("metadata", map[string]any{"participants": c.participants(), "meta": c.participantMeta()})
}

// rekey applies a re-INVITE's SDES key to an SRTP stream (RFC 4568 section 7.1.4: a new key in
// a new offer): the stream decrypts with it from the next packet, and the answer carries a new
// key of callrouter's own. An offer without a usable key keeps the current one.
func (c *callState) rekey(st *stream, media int, lines []string) {
	if st.key == nil {
		return
	}
	k, ok := pickCrypto(lines)
	c.mu.Lock()
	defer c.mu.Unlock()
	if !ok || (k.suite == st.key.suite && bytes.Equal(k.key, st.key.key) && bytes.Equal(k.salt, st.key.salt)) {
		return
	}
	ctx, err := newSRTPContext(k)
	if err != nil {
		return
	}
	a, err := answerCrypto(k)
	if err != nil {
		return
	}
	st.srtp.Store(ctx)
	st.key = &k
	c.answers[media].Crypto = a
}

// participants lists the SIPREC participants with the leg each one sends.
func (c *callState) participants() []participant {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rec == nil {
		return nil
	}
	var out []participant
	for i, p := range c.rec.Participants {
		aor, name := p.identity()
		q := participant{ID: p.ID, AOR: aor, Name: name}
		for _, pl := range c.plans {
			if c.rec.senderOfLabel(c.answers[pl.media].Label) == i {
				q.Leg = pl.name
			}
		}
		out = append(out, q)
	}
	return out
}

// participantMeta flattens the participants into call metadata: participant.<leg>.aor, .name
// and .id for participants that send a leg, participant.<n>.* for the others.
func (c *callState) participantMeta() map[string]string {
	m := map[string]string{}
	for i, p := range c.participants() {
		key := "participant." + strconv.Itoa(i)
		if p.Leg != "" {
			key = "participant." + p.Leg
		}
		m[key+".id"] = clip(p.ID)
		if p.AOR != "" {
			m[key+".aor"] = clip(p.AOR)
		}
		if p.Name != "" {
			m[key+".name"] = clip(p.Name)
		}
	}
	c.mu.Lock()
	if c.rec != nil && len(c.rec.Sessions) > 0 {
		m["siprec.session_id"] = clip(c.rec.Sessions[0].ID)
	}
	c.mu.Unlock()
	return m
}

// dtmfData is the body of a "dtmf" event.
type dtmfData struct {
	Digit      string `json:"digit"`
	Event      uint8  `json:"event"`
	Leg        string `json:"leg"`
	LegIndex   int    `json:"leg_index"`
	MediaTS    uint64 `json:"media_ts"` // in samples at the leg's rate, on the leg's frame timeline
	Seq        uint64 `json:"seq"`      // the leg's frame sequence number covering the start
	Rate       uint32 `json:"rate"`     // the leg's sample rate
	DurationMS int    `json:"duration_ms"`
	Ended      bool   `json:"ended"`         // false when every end packet was lost
	Via        string `json:"via,omitempty"` // "info" for SIP INFO; empty for RFC 4733
}

// maskedDTMF is a "dtmf" event during a secure pause (ingest.Call.Paused): that a key was pressed,
// when and for how long, but not which; "digit" and "event" are left out (the outer fields, zero
// and omitted, hide the embedded ones).
type maskedDTMF struct {
	dtmfData
	Digit  string `json:"digit,omitempty"`
	Event  *uint8 `json:"event,omitempty"`
	Masked bool   `json:"masked"`
}

func (c *callState) onDTMF(st *stream, e dtmfEvent, pos int64) {
	c.s.m.dtmf.Inc()
	mul := uint64(st.codec.rate) / uint64(st.codec.clock)
	if pos < 0 {
		pos = 0
	}
	c.publish("dtmf", dtmfData{Digit: e.Digit(), Event: e.Code, Leg: c.plans[st.leg].name, LegIndex: st.leg,
		MediaTS: uint64(pos) * mul, Seq: uint64(pos) / uint64(st.cut.frameTicks), Rate: st.codec.rate,
		DurationMS: int(e.Duration) * 1000 / st.codec.clock, Ended: e.Ended})
}

// publish sends a call event on events.<tenant>.<call>.<kind> on the call's connection (after
// its frames), within the per-call event budget.
func (c *callState) publish(kind string, data any) {
	now := time.Now()
	c.mu.Lock()
	if now.Sub(c.evWindow) >= time.Second {
		c.evWindow, c.evCount = now, 0
	}
	c.evCount++
	over := c.evCount > c.s.cfg.EventsPerCall
	c.mu.Unlock()
	if over || c.call == nil {
		return
	}
	if d, ok := data.(dtmfData); ok && c.call.Paused() {
		data = maskedDTMF{dtmfData: d, Masked: true}
	}
	ev := wire.Event{Kind: kind, Epoch: c.call.Epoch(), Time: now, Source: "ingest/" + c.s.node.ID() + "/sip"}
	if err := c.call.PublishEvent(ev, data); err != nil {
		c.log.Warn().Err(err).Str("kind", kind).Msg("call event not published")
	}
}

// add registers a placed call and starts its watcher; false while draining (or, when INVITEs
// raced past the check, at MaxCalls).
func (s *Server) add(c *callState) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.registry.Acquire("") != nil {
		return false
	}
	s.calls[c.dlg.ID] = c
	s.m.calls.Set(float64(len(s.calls)))
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		// A panic in the call's own goroutine ends the call (reason error), never the process.
		defer guard.Recover("sip_call", c.log, func(any) { c.finish(reasonError, true) })
		c.watch()
	}()
	return true
}

// watch ends the call when the server's checker finds its time up (RTP inactivity, session
// expiry, the maximum duration), or when ingest ended it (media timeout, shutdown). It waits on
// channels only: no timer per call.
func (c *callState) watch() {
	select {
	case <-c.done:
	case <-c.call.Done():
		c.finish("ingest_ended", true)
	case <-c.failed:
		c.finish(reasonError, true)
	case reason := <-c.expired:
		c.finish(reason, true)
	}
}

// watchInterval is how often watchCalls looks at every call's clocks.
const watchInterval = 250 * time.Millisecond

// watchCalls is the one timer of all calls: every watchInterval until stop it tells each call
// whose time is up why (callState.expiry), and the call's watch ends it. One ticker for the
// server rather than one per call spares a goroutine wake-up per call four times a second.
func (s *Server) watchCalls(stop <-chan struct{}) {
	t := time.NewTicker(watchInterval)
	defer t.Stop()
	var calls []*callState
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			s.mu.Lock()
			for _, c := range s.calls {
				calls = append(calls, c)
			}
			s.mu.Unlock()
			for _, c := range calls {
				if reason := c.expiry(now); reason != "" {
					select {
					case c.expired <- reason:
					default: // told already
					}
				}
			}
			clear(calls)
			calls = calls[:0]
		}
	}
}

// expiry returns why the call must end at now, or "".
func (c *callState) expiry(now time.Time) string {
	cfg := &c.s.cfg
	if cfg.MaxCallDuration > 0 && now.Sub(c.start) > cfg.MaxCallDuration {
		return "max_duration"
	}
	c.mu.Lock()
	exp, last := c.expires, c.refreshed
	c.mu.Unlock()
	if last.IsZero() {
		last = c.start
	}
	if exp > 0 && now.Sub(last) > exp {
		return "session_expired"
	}
	if cfg.RTPTimeout > 0 {
		newest := c.start.UnixNano() // a stream's clock starts when it runs, after the call is added
		for _, st := range c.streams {
			newest = max(newest, st.lastRTP.Load())
		}
		if now.UnixNano()-newest > int64(cfg.RTPTimeout) {
			return "rtp_timeout"
		}
	}
	return ""
}

// finish ends the call once: BYE to the peer when we hang up, RTP sockets closed (their last
// frames flushed), the ingest call ended, ports released into quarantine.
func (c *callState) finish(reason string, bye bool) {
	c.finishOnce.Do(func() {
		close(c.done)
		if bye {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if err := c.dlg.Bye(ctx); err != nil {
				c.log.Debug().Err(err).Msg("BYE failed")
			}
			cancel()
		}
		for _, st := range c.streams {
			st.stop()
		}
		c.swg.Wait()
		c.call.End(reason)
		for _, st := range c.streams {
			st.release(c.s.ports)
		}
		_ = c.dlg.Close()
		c.s.mu.Lock()
		if c.s.calls[c.dlg.ID] == c {
			delete(c.s.calls, c.dlg.ID)
			c.s.registry.Release("")
		}
		c.s.m.calls.Set(float64(len(c.s.calls)))
		c.s.mu.Unlock()
		c.s.m.ended.WithLabelValues(reason).Inc()
		c.log.Info().Str("call", c.spec.Call).Str("reason", reason).Dur("duration", time.Since(c.start)).Msg("SIP call ended")
	})
}
