package proc

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/coder/websocket"
)

func init() {
	Register("fork", newFork)
}

// ForkTarget is where the "fork" processor streams one tenant's calls: an AudioHook server
// (protocol v2), the API key and base64 client secret that sign the upgrade, and the organization
// id sent in the header and in open.
type ForkTarget struct {
	URL    string
	APIKey string
	Secret []byte // empty: unsigned
	OrgID  string
	// Twilio: the target takes the Twilio Media Streams shape instead, with Token (if any) as
	// the custom parameter "token".
	Twilio bool
	Token  string
}

// Fork timing and bounds.
const (
	forkQueue        = 500 // frames (per call) waiting for the connection: 5 s of one leg (fork.queue)
	forkReplay       = 50  // slots (1 s) of what was sent that a reconnected session sends again
	forkBatch        = 10  // 20 ms frames per binary message (200 ms, as Genesys sends)
	forkOpenTimeout  = 5 * time.Second
	forkCloseTimeout = 5 * time.Second
	forkWriteTimeout = 5 * time.Second
	// forkStopGrace is how long a fork may go on after its call stopped, to deliver the end:
	// then every connection attempt, backoff and write gives up.
	forkStopGrace  = 5 * time.Second
	forkSettle     = 100 * time.Millisecond // after the first frame, how long open waits for the other leg's
	forkLagWait    = time.Second            // how long a slot waits for a channel that has not reached it yet
	forkMaxAhead   = 500                    // slots held beyond what was sent (10 s, twice ingest's ring): a frame further ahead gives up the oldest
	forkReadLimit  = 64 << 10               // bytes of one message from the receiver
	forkEntityMax  = 8 << 10                // bytes of one event entity (type and data)
	forkEventRate  = 20                     // receiver event entities a second per call, and
	forkEventBurst = 50                     // a burst of this many
	defaultForkOrg = "00000000-0000-4000-8000-000000000000"
	// ForkEventKind is the kind of the callrouter event each receiver event entity becomes.
	ForkEventKind = "fork.event"
)

// forkProc is the "fork" processor: it streams the frames of each call of a tenant with a target
// to that target as an AudioHook client (fork.targets=<file>: "<tenant> <ws-url> <api-key>
// <base64-secret or -> [organization-id]" a line), or in the Twilio Media Streams shape
// ("<tenant> twilio <ws-url> [token]"). Legs caller and agent are sent as channels
// external and internal (PCMU or L16 at 8 kHz; calls in other codecs are not forked), one binary
// message per 200 ms. The connection runs on a goroutine of its own behind a bounded queue: a slow
// or dead target never holds up the call; what does not fit is dropped and counted.
type forkProc struct {
	targets map[string]ForkTarget
	dropped atomic.Uint64
	queue   int
	retry   forkRetry
}

// forkRetry is how an AudioHook fork reconnects after its connection fails: up to attempts
// tries after each failure, the n-th after a delay of backoff×2ⁿ⁻¹ (at most max), of which a
// random half is jitter.
type forkRetry struct {
	attempts     int
	backoff, max time.Duration
}

func newFork(o Options) (Processor, error) {
	if err := o.Only("targets", "queue", "reconnect_attempts", "reconnect_backoff", "reconnect_backoff_max"); err != nil {
		return nil, fmt.Errorf("fork: %w", err)
	}
	p := &forkProc{}
	var err error
	if p.queue, err = o.Int("queue", forkQueue); err != nil || p.queue < 10 || p.queue > 100000 {
		return nil, fmt.Errorf("fork: -proc-opt fork.queue=%s: want frames from 10 to 100000", o["queue"])
	}
	if p.retry.attempts, err = o.Int("reconnect_attempts", 10); err != nil || p.retry.attempts < 0 || p.retry.attempts > 1000 {
		return nil, fmt.Errorf("fork: -proc-opt fork.reconnect_attempts=%s: want 0 (never reconnect) to 1000", o["reconnect_attempts"])
	}
	dur := func(key string, def time.Duration) (time.Duration, error) {
		v := o[key]
		if v == "" {
			return def, nil
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Millisecond || d > 5*time.Minute {
			return 0, fmt.Errorf("fork: -proc-opt fork.%s=%s: want a duration from 1ms to 5m", key, v)
		}
		return d, nil
	}
	if p.retry.backoff, err = dur("reconnect_backoff", 250*time.Millisecond); err != nil {
		return nil, err
	}
	if p.retry.max, err = dur("reconnect_backoff_max", 5*time.Second); err != nil {
		return nil, err
	}
	if p.retry.max < p.retry.backoff {
		return nil, fmt.Errorf("fork: -proc-opt fork.reconnect_backoff_max=%s is below fork.reconnect_backoff=%s", p.retry.max, p.retry.backoff)
	}
	path := o["targets"]
	if path == "" {
		return nil, errors.New("fork: option targets (a file) is required")
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("fork: %w", err)
	}
	defer f.Close()
	if p.targets, err = ParseForkTargets(f); err != nil {
		return nil, err
	}
	return p, nil
}

// ParseForkTargets reads a targets file.
func ParseForkTargets(r interface{ Read([]byte) (int, error) }) (map[string]ForkTarget, error) {
	out := map[string]ForkTarget{}
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == '#' {
			continue
		}
		fs := strings.Fields(text)
		if len(fs) >= 2 && fs[1] == "twilio" {
			t, err := parseTwilioTarget(fs, line)
			if err != nil {
				return nil, err
			}
			if _, dup := out[fs[0]]; dup {
				return nil, fmt.Errorf("fork: targets line %d: tenant %s twice", line, fs[0])
			}
			out[fs[0]] = t
			continue
		}
		if len(fs) != 4 && len(fs) != 5 {
			return nil, fmt.Errorf("fork: targets line %d: want \"<tenant> <ws-url> <api-key> <base64-secret or -> [organization-id]\"", line)
		}
		u, err := url.Parse(fs[1])
		if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
			return nil, fmt.Errorf("fork: targets line %d: %q is not a ws:// or wss:// URL", line, fs[1])
		}
		t := ForkTarget{URL: fs[1], APIKey: fs[2], OrgID: defaultForkOrg}
		if fs[3] != "-" {
			if t.Secret, err = base64.StdEncoding.DecodeString(fs[3]); err != nil || len(t.Secret) == 0 {
				return nil, fmt.Errorf("fork: targets line %d: the secret is not base64", line)
			}
		}
		if len(fs) == 5 {
			t.OrgID = fs[4]
		}
		if _, dup := out[fs[0]]; dup {
			return nil, fmt.Errorf("fork: targets line %d: tenant %s twice", line, fs[0])
		}
		out[fs[0]] = t
	}
	return out, sc.Err()
}

type forkNoop struct{}

func (forkNoop) Frame(*Frame)       {}
func (forkNoop) Stop(string)        {}
func (p *forkProc) Dropped() uint64 { return p.dropped.Load() }

var forkChannels = map[string]string{"caller": "external", "agent": "internal"}

func (p *forkProc) Start(c Call) (Handler, error) {
	spec := c.Spec()
	t, ok := p.targets[spec.Tenant]
	if !ok {
		return forkNoop{}, nil
	}
	var chans []string
	legIdx := map[uint8]int{}
	format := ""
	for _, l := range spec.Legs {
		ch, ok := forkChannels[l.Name]
		f := map[frame.Codec]string{frame.CodecPCMU: "PCMU", frame.CodecL16: "L16"}[l.Codec]
		if !ok || f == "" || l.Rate != 8000 || (format != "" && f != format) || len(chans) == 2 {
			continue
		}
		format = f
		legIdx[l.Index] = len(chans)
		chans = append(chans, ch)
	}
	if len(chans) == 0 || (t.Twilio && format != "PCMU") {
		why := "no caller/agent leg in PCMU or L16 at 8 kHz"
		if t.Twilio {
			why = "no caller/agent leg in PCMU at 8 kHz"
		}
		c.Emit("fork", map[string]string{"state": "skipped", "why": why})
		return forkNoop{}, nil
	}
	h := &forkCall{p: p, c: c, t: t, chans: chans, format: format, legIdx: legIdx,
		in: make(chan forkFrame, p.queue), stop: make(chan struct{}), done: make(chan struct{})}
	h.grace, h.endGrace = context.WithCancel(context.Background())
	if t.Twilio {
		go h.runTwilio()
	} else {
		go h.run()
	}
	return h, nil
}

// forkFrame is a frame of a channel, or (payload nil) a gap: frames seq..gapTo will not come.
type forkFrame struct {
	ch      int
	seq     uint32
	gapTo   uint32
	payload []byte
}

// forkGone marks a slot whose frame will not come (a gap, a paused frame).
var forkGone = []byte{}

// forkCall is one call's fork: Frame and Stop (on the call's goroutine) hand frames to run.
type forkCall struct {
	p       *forkProc
	c       Call
	t       ForkTarget
	chans   []string
	format  string
	legIdx  map[uint8]int
	in      chan forkFrame
	stop    chan struct{}
	done    chan struct{}
	dropped atomic.Int64 // frames the queue dropped (oldest first)
	// stopReason is Stop's: at the call's end what one channel lacks at the tail is silence;
	// otherwise the call goes on elsewhere, and the tail only one channel has is left to it.
	stopReason string
	// grace bounds every network operation and wait of the fork: it ends forkStopGrace after
	// Stop, so the fork never outlives its call by more (a receiver that hangs or refuses
	// cannot keep it retrying).
	grace    context.Context
	endGrace context.CancelFunc

	// Receiver events (readLoop only).
	events, eventsLimited, eventsMalformed atomic.Int64
	tokensMu                               sync.Mutex // a reconnect's old readLoop may still be reading
	tokens                                 float64
	tokensAt                               time.Time
	clock                                  func() time.Time // the rate's clock; nil: time.Now

	// Reconnection (run only).
	sessions   []forkContinued // the sessions before the current one, for continuedSessions
	reconnects int64
}

// forkContinued names an earlier session in continuedSessions.
type forkContinued struct {
	ID        string `json:"id"`
	Serverseq int64  `json:"serverseq"`
	Clientseq int64  `json:"clientseq"`
}

// forkSent is what a session sent for n slots from base: audio (a binary message), or nil for a
// discarded span.
type forkSent struct {
	base, n int64
	audio   []byte
}

// forkFinal is a refusal that reconnecting would not change.
type forkFinal struct{ why string }

func (e forkFinal) Error() string { return e.why }

// Frame queues a frame for the connection; when the queue is full the oldest frame waiting is
// dropped (its slot becomes a gap: silence, or `discarded` when no channel has it).
func (h *forkCall) Frame(f *Frame) {
	ch, ok := h.legIdx[f.Header.Leg]
	if !ok || f.Header.Has(frame.FlagLast) || len(f.Payload) == 0 {
		return
	}
	h.queue(forkFrame{ch: ch, seq: f.Header.Seq, payload: append([]byte(nil), f.Payload...)})
}

// Gap tells the connection that a leg's frames will not come, so it sends what it holds without
// waiting for them.
func (h *forkCall) Gap(g Gap) {
	if ch, ok := h.legIdx[g.Leg]; ok && g.To >= g.From {
		h.queue(forkFrame{ch: ch, seq: g.From, gapTo: g.To})
	}
}

// Paused: a paused frame (secure pause) has no audio; its slot is a gap.
func (h *forkCall) Paused(fh *frame.Header) {
	if ch, ok := h.legIdx[fh.Leg]; ok && !fh.Has(frame.FlagLast) {
		h.queue(forkFrame{ch: ch, seq: fh.Seq, gapTo: fh.Seq})
	}
}

func (h *forkCall) queue(ff forkFrame) {
	for range 2 {
		select {
		case h.in <- ff:
			return
		default:
		}
		select {
		case <-h.in:
			h.dropped.Add(1)
			h.p.dropped.Add(1)
		default:
		}
	}
	h.dropped.Add(1)
	h.p.dropped.Add(1)
}

// Stop ends the session after the queued audio; it does not wait for the target.
func (h *forkCall) Stop(reason string) {
	h.stopReason = reason // read by run after stop is closed
	close(h.stop)
	time.AfterFunc(forkStopGrace, h.endGrace)
}

// ctx is the context of one network operation of at most d: it ends sooner when the grace after
// the call's stop does.
func (h *forkCall) ctx(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(h.grace, d)
}

// sleep waits d, or less when the grace after the call's stop ends; it reports whether the fork
// may go on.
func (h *forkCall) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return h.grace.Err() == nil
	case <-h.grace.Done():
		return false
	}
}

// errCallEnded is why a fork gives up reconnecting once its call has stopped and the grace
// passed.
var errCallEnded = fmt.Errorf("fork: the call ended before the receiver could be reached (%s after its end)", forkStopGrace)

// run is the AudioHook client: wait for the call's first frames (where they sit on the call's
// timeline is where the session starts), connect, open, stream, close.
func (h *forkCall) run() {
	defer close(h.done)
	log := h.c.Log()
	first := h.firstFrames()
	if len(first) == 0 {
		return // the call stopped before a frame came: nothing to fork
	}
	start := int64(first[0].seq)
	for _, f := range first {
		start = min(start, int64(f.seq))
	}
	s, err := h.dial(start)
	if err != nil {
		h.fail(nil, start, err)
		return
	}
	h.opened(s)
	pending := first
	stalled := 0 // sessions in a row that ended without sending anything new
	for {
		from := s.base
		reason := h.stream(s, pending)
		pending = nil
		if reason != "write_failed" && reason != "lost" && reason != "disconnected" && reason != "reconnect_requested" {
			h.closed(s, reason)
			return
		}
		// The connection failed under the session, or the receiver ended it without saying it
		// was done: a new session continues from what may not have arrived.
		s.conn.CloseNow()
		if s.base > from {
			stalled = 0
		} else if stalled++; stalled > h.p.retry.attempts {
			h.fail(s, s.base, fmt.Errorf("fork: %d sessions in a row ended (%s) before sending anything new", stalled, reason))
			return
		} else if !h.sleep(h.p.retry.delay(stalled - 1)) {
			h.fail(s, s.base, errCallEnded)
			return
		}
		h.reconnects++
		h.c.Emit("fork", map[string]any{"state": "reconnecting", "session": s.id, "why": reason, "position": forkPosition(s.base)})
		log.Info().Str("session", s.id).Str("why", reason).Msg("fork: reconnecting")
		h.sessions = append(h.sessions, forkContinued{ID: s.id, Serverseq: s.server.Load(), Clientseq: s.seq})
		ns, err := h.resume(s)
		if err != nil {
			h.fail(s, s.base, err)
			return
		}
		s = ns
		h.opened(s)
	}
}

// opened emits the fork event for a session that is open.
func (h *forkCall) opened(s *forkSession) {
	open := map[string]any{"state": "open", "session": s.id, "position": forkPosition(s.start)}
	if s.start > 0 || len(h.sessions) > 0 {
		open["continues"] = s.root
		if len(h.sessions) > 0 {
			open["continues"] = h.sessions[len(h.sessions)-1].ID
		}
	}
	h.c.Emit("fork", open)
}

// counts are the fork event's counters.
func (h *forkCall) counts(s *forkSession, ev map[string]any) map[string]any {
	ev["dropped"], ev["reconnects"] = h.dropped.Load(), h.reconnects
	ev["events"], ev["events_limited"], ev["events_malformed"] = h.events.Load(), h.eventsLimited.Load(), h.eventsMalformed.Load()
	if s != nil {
		ev["late"], ev["discarded_ms"], ev["filled_ms"] = s.late, s.discarded*20, s.filled*20
	}
	return ev
}

func (h *forkCall) closed(s *forkSession, reason string) {
	h.c.Emit("fork", h.counts(s, map[string]any{"state": "closed", "session": s.id, "reason": reason, "position": forkPosition(s.base)}))
}

// fail reports that the fork gave up (a final refusal, or every attempt failed) and drains the
// queue until the call stops, so that Frame never blocks.
func (h *forkCall) fail(s *forkSession, at int64, err error) {
	var final forkFinal
	h.c.Log().Warn().Err(err).Str("url", h.t.URL).Msg("fork: not connected")
	h.c.Emit("fork", h.counts(s, map[string]any{"state": "failed", "why": err.Error(), "final": errors.As(err, &final), "position": forkPosition(at)}))
	for {
		select {
		case <-h.in:
		case <-h.stop:
			return
		}
	}
}

// dial connects a session starting at slot start, retrying with backoff unless the refusal is
// final. It runs on the fork's goroutine: meanwhile the call's frames wait in the bounded queue.
func (h *forkCall) dial(start int64) (*forkSession, error) {
	retry := h.p.retry
	for attempt := 0; ; attempt++ {
		if h.grace.Err() != nil {
			return nil, errCallEnded
		}
		s, err := h.connect(start)
		if err == nil {
			return s, nil
		}
		if h.grace.Err() != nil {
			return nil, errCallEnded
		}
		var final forkFinal
		if errors.As(err, &final) || attempt >= retry.attempts {
			if !errors.As(err, &final) && attempt > 0 {
				err = fmt.Errorf("%w (after %d attempts)", err, attempt+1)
			}
			return nil, err
		}
		h.c.Log().Info().Err(err).Int("attempt", attempt+1).Msg("fork: connect failed, retrying")
		if !h.sleep(retry.delay(attempt)) {
			return nil, errCallEnded
		}
	}
}

// delay is the wait before retry n (from 0): backoff×2ⁿ, at most max, less up to half of it at
// random, so that the forks of many calls that lost one receiver do not come back in step.
func (r forkRetry) delay(n int) time.Duration {
	d := r.backoff << min(n, 20)
	if d > r.max || d <= 0 {
		d = r.max
	}
	return d/2 + mrand.N(d/2+1)
}

// resume opens a session that continues old: it starts at the oldest slot that old sent and
// this fork still holds (up to forkReplay slots, which may not have reached the receiver before
// the connection failed), sends those again, then goes on with what old held; frames the
// queue dropped meanwhile leave a hole that goes out as `discarded`.
func (h *forkCall) resume(old *forkSession) (*forkSession, error) {
	start := old.base
	if len(old.sent) > 0 {
		start = old.sent[0].base
	}
	for tries := 0; ; tries++ {
		s, err := h.dial(start)
		if err != nil {
			return nil, err
		}
		ctx, cancel := h.ctx(forkWriteTimeout)
		for _, m := range old.sent {
			if m.audio == nil {
				err = s.send(ctx, "discarded", map[string]string{"start": forkPosition(s.base), "discarded": forkPosition(m.n)})
			} else {
				err = s.conn.Write(ctx, websocket.MessageBinary, m.audio)
			}
			if err != nil {
				break
			}
			s.base += m.n
		}
		cancel()
		if err == nil {
			s.slots, s.at, s.out = old.slots, old.at, old.out
			s.late, s.discarded, s.filled = old.late, old.discarded, old.filled
			s.sent, s.sentSlots = old.sent, old.sentSlots
			return s, nil
		}
		// The new connection failed too: the next one starts where this one did.
		s.conn.CloseNow()
		h.sessions = append(h.sessions, forkContinued{ID: s.id, Serverseq: s.server.Load(), Clientseq: s.seq})
		if tries >= h.p.retry.attempts {
			return nil, fmt.Errorf("fork: resending to a new session: %w", err)
		}
		h.reconnects++
	}
}

// firstFrames waits for the call's first frame, then up to forkSettle for a frame of every
// channel, so that a session starts where the earliest of them sits.
func (h *forkCall) firstFrames() []forkFrame {
	var out []forkFrame
	var settle <-chan time.Time
	have := make([]bool, len(h.chans))
	for n := 0; n < len(h.chans); {
		select {
		case f := <-h.in:
			if f.payload == nil {
				continue // a gap before the session: nothing to hold
			}
			out = append(out, f)
			if !have[f.ch] {
				have[f.ch] = true
				n++
			}
			if settle == nil {
				t := time.NewTimer(forkSettle)
				defer t.Stop()
				settle = t.C
			}
		case <-settle:
			return out
		case <-h.stop:
			for { // what is queued still goes out
				select {
				case f := <-h.in:
					if f.payload != nil {
						out = append(out, f)
					}
				default:
					return out
				}
			}
		}
	}
	return out
}

// forkSession is the client side of one AudioHook session. Its audio is laid out on the call's
// frame timeline: the frame with sequence n on any leg is slot n, position n × 20 ms, so every
// worker that holds the call puts a frame at the same position.
type forkSession struct {
	conn   *websocket.Conn
	id     string
	root   string // the call's first session (where the timeline starts)
	seq    int64
	server atomic.Int64  // last server seq seen
	closed chan struct{} // closed answered
	disc   chan struct{} // disconnect received (discWhy set)
	recon  chan struct{} // reconnect received: the receiver asks for a session that continues this one
	dead   chan struct{} // the connection failed before closed
	start  int64         // slot of open's position

	discWhy string

	base       int64      // slot of the next audio to send: position = base × 20 ms
	slots      [][][]byte // per channel, frames from base on (nil: none); a channel reached slot i if len > i
	at         []int64    // per slot from base, when a channel first reached it (unix nanos)
	now        int64
	frameBytes int
	silence    byte
	out        []byte

	sent      []forkSent // the last forkReplay slots or more sent, in order (a resumed session sends them again)
	sentSlots int64

	late      int64 // frames behind what was sent (a replay of what this session already had)
	discarded int64 // slots reported as discarded
	filled    int64 // channel slots sent as silence
}

func forkUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return uuidOf(b)
}

func uuidOf(b []byte) string {
	b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// forkID is a UUID derived from the call, so that every worker names the same thing alike.
func forkID(what, tenant, call string) string {
	sum := sha256.Sum256([]byte("callrouter fork\x00" + what + "\x00" + tenant + "\x00" + call))
	return uuidOf(sum[:16])
}

// forkPosition is an AudioHook position (ISO 8601 duration) of a slot.
func forkPosition(slot int64) string {
	return "PT" + strconv.FormatFloat((time.Duration(slot)*frame.Duration).Seconds(), 'f', -1, 64) + "S"
}

// connect upgrades (signed as an AudioHook client does) and runs open → opened. A session that
// starts at slot 0 is the call's first: its id is derived from the call. One that starts later
// continues it (the call moved to this worker): it has an id of its own and names the first in
// continuedSessions.
func (h *forkCall) connect(start int64) (*forkSession, error) {
	u, _ := url.Parse(h.t.URL)
	spec := h.c.Spec()
	s := &forkSession{root: forkID("session", spec.Tenant, spec.Call), closed: make(chan struct{}), disc: make(chan struct{}),
		recon: make(chan struct{}), dead: make(chan struct{}), base: start, start: start, slots: make([][][]byte, len(h.chans)), frameBytes: 160, silence: 0xff}
	s.id = s.root
	var continued []forkContinued
	if start > 0 || len(h.sessions) > 0 {
		s.id = forkUUID()
		if len(h.sessions) == 0 || h.sessions[0].ID != s.root {
			// Another worker's session carried the call before: this worker cannot know its
			// message counts, so they are 0; the receiver joins the sessions by conversationId
			// and position.
			continued = append(continued, forkContinued{ID: s.root})
		}
		continued = append(continued, h.sessions...)
	}
	if h.format == "L16" {
		s.frameBytes, s.silence = 320, 0
	}
	hdr := http.Header{}
	hdr.Set("Audiohook-Organization-Id", h.t.OrgID)
	hdr.Set("Audiohook-Session-Id", s.id)
	hdr.Set("Audiohook-Correlation-Id", forkUUID())
	hdr.Set("X-API-KEY", h.t.APIKey)
	if len(h.t.Secret) > 0 {
		signAudioHook(hdr, u, h.t)
	}
	ctx, cancel := h.ctx(forkOpenTimeout)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, h.t.URL, &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		if resp != nil && resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != http.StatusRequestTimeout &&
			resp.StatusCode != http.StatusTooManyRequests {
			return nil, forkFinal{fmt.Sprintf("fork: the receiver refused the upgrade: %d %s", resp.StatusCode, http.StatusText(resp.StatusCode))}
		}
		return nil, err
	}
	conn.SetReadLimit(forkReadLimit)
	s.conn = conn
	media := map[string]any{"type": "audio", "format": h.format, "channels": h.chans, "rate": 8000}
	open := map[string]any{"organizationId": h.t.OrgID, "conversationId": forkID("conversation", spec.Tenant, spec.Call),
		"participant": map[string]any{"id": forkID("participant", spec.Tenant, spec.Call), "ani": spec.Meta["ani"], "aniName": "", "dnis": spec.Meta["dnis"]},
		"media":       []any{media}, "customConfig": map[string]string{"tenant": spec.Tenant, "call": spec.Call}}
	if len(continued) > 0 {
		open["continuedSessions"] = continued
	}
	if err := s.send(ctx, "open", open); err != nil {
		conn.CloseNow()
		return nil, err
	}
	_, b, err := conn.Read(ctx)
	var m struct {
		Type       string `json:"type"`
		Seq        int64  `json:"seq"`
		Parameters struct {
			Media  []json.RawMessage `json:"media"`
			Reason string            `json:"reason"`
		} `json:"parameters"`
	}
	if err == nil {
		err = json.Unmarshal(b, &m)
	}
	if err != nil || m.Type != "opened" || len(m.Parameters.Media) != 1 {
		conn.CloseNow()
		switch {
		case err != nil:
		case m.Type == "disconnect" && forkDisconnectFinal(m.Parameters.Reason):
			err = forkFinal{fmt.Sprintf("fork: the receiver answered open with disconnect %s", m.Parameters.Reason)}
		case m.Type == "opened":
			err = forkFinal{"fork: opened without our media"}
		default:
			err = fmt.Errorf("fork: got %s, not opened", m.Type)
		}
		return nil, err
	}
	s.server.Store(m.Seq)
	go h.readLoop(s)
	return s, nil
}

// forkDisconnectFinal: a receiver's disconnect with reason completed (it wants no more of the
// call) or unauthorized ends the fork; error (a protocol violation, a receiver going down) is
// retried within fork.reconnect_attempts.
func forkDisconnectFinal(reason string) bool {
	return reason == "completed" || reason == "unauthorized"
}

// signAudioHook signs an upgrade request as the AudioHook reference client does (RFC 9421,
// hmac-sha256 over the six required components).
func signAudioHook(h http.Header, u *url.URL, t ForkTarget) {
	nonce := make([]byte, 18)
	_, _ = rand.Read(nonce)
	now := time.Now().Unix()
	params := fmt.Sprintf(`("@request-target" "@authority" "audiohook-organization-id" "audiohook-session-id" "audiohook-correlation-id" "x-api-key");keyid="%s";nonce="%s";alg="hmac-sha256";created=%d;expires=%d`,
		t.APIKey, base64.StdEncoding.EncodeToString(nonce), now, now+30)
	target := u.EscapedPath()
	if u.RawQuery != "" {
		target += "?" + u.RawQuery
	}
	base := fmt.Sprintf("\"@request-target\": %s\n\"@authority\": %s\n\"audiohook-organization-id\": %s\n\"audiohook-session-id\": %s\n\"audiohook-correlation-id\": %s\n\"x-api-key\": %s\n\"@signature-params\": %s",
		target, u.Host, h.Get("Audiohook-Organization-Id"), h.Get("Audiohook-Session-Id"), h.Get("Audiohook-Correlation-Id"), t.APIKey, params)
	mac := hmac.New(sha256.New, t.Secret)
	mac.Write([]byte(base))
	h.Set("Signature-Input", "sig1="+params)
	h.Set("Signature", "sig1=:"+base64.StdEncoding.EncodeToString(mac.Sum(nil))+":")
}

func (s *forkSession) send(ctx context.Context, typ string, params any) error {
	s.seq++
	b, _ := json.Marshal(map[string]any{"version": "2", "type": typ, "id": s.id, "seq": s.seq, "serverseq": s.server.Load(),
		"position": forkPosition(s.base), "parameters": params})
	return s.conn.Write(ctx, websocket.MessageText, b)
}

// readLoop follows the server: its seq, closed, disconnect and events.
func (h *forkCall) readLoop(s *forkSession) {
	for {
		_, b, err := s.conn.Read(context.Background())
		if err != nil {
			close(s.dead)
			return
		}
		var m struct {
			Type       string          `json:"type"`
			Seq        int64           `json:"seq"`
			Parameters json.RawMessage `json:"parameters"`
		}
		if json.Unmarshal(b, &m) != nil {
			h.eventsMalformed.Add(1)
			continue
		}
		s.server.Store(m.Seq)
		switch m.Type {
		case "closed":
			close(s.closed)
			return
		case "disconnect":
			var p struct {
				Reason string `json:"reason"`
			}
			_ = json.Unmarshal(m.Parameters, &p)
			select {
			case <-s.disc:
			default:
				s.discWhy = p.Reason
				close(s.disc)
			}
		case "reconnect":
			select {
			case <-s.recon:
			default:
				close(s.recon)
			}
		case "event":
			h.onEvent(s, m.Parameters)
		}
	}
}

// forkEvent is the data of a fork.event: one entity of a receiver's `event` message.
type forkEvent struct {
	Session string          `json:"session"`
	Type    string          `json:"type"`
	Data    json.RawMessage `json:"data"`
}

// onEvent publishes each entity of an `event` message as a callrouter event (kind fork.event),
// at most forkEventRate a second (burst forkEventBurst) per call; an entity that is not an
// object with a type (1-64 bytes) and data, or over forkEntityMax bytes, is counted and dropped,
// and so is one over the rate.
func (h *forkCall) onEvent(s *forkSession, params json.RawMessage) {
	var p struct {
		Entities []json.RawMessage `json:"entities"`
	}
	if json.Unmarshal(params, &p) != nil || len(p.Entities) == 0 {
		h.eventsMalformed.Add(1)
		return
	}
	for _, e := range p.Entities {
		var ent struct {
			Type string          `json:"type"`
			Data json.RawMessage `json:"data"`
		}
		if len(e) > forkEntityMax || json.Unmarshal(e, &ent) != nil || ent.Type == "" || len(ent.Type) > 64 ||
			len(ent.Data) == 0 || string(ent.Data) == "null" {
			h.eventsMalformed.Add(1)
			continue
		}
		if !h.takeToken() {
			h.eventsLimited.Add(1)
			continue
		}
		h.events.Add(1)
		h.c.Emit(ForkEventKind, forkEvent{Session: s.id, Type: ent.Type, Data: ent.Data})
	}
}

func (h *forkCall) takeToken() bool {
	now := time.Now()
	if h.clock != nil {
		now = h.clock()
	}
	h.tokensMu.Lock()
	defer h.tokensMu.Unlock()
	if h.tokensAt.IsZero() {
		h.tokens = forkEventBurst
	} else {
		h.tokens = min(forkEventBurst, h.tokens+now.Sub(h.tokensAt).Seconds()*forkEventRate)
	}
	h.tokensAt = now
	if h.tokens < 1 {
		return false
	}
	h.tokens--
	return true
}

// stream sends the call's audio (first, the frames that were waiting for the session) until the
// call stops or the server disconnects, then closes.
func (h *forkCall) stream(s *forkSession, first []forkFrame) string {
	reason := "end"
	put := func(f forkFrame) error {
		s.now = time.Now().UnixNano()
		if f.payload == nil {
			s.gone(f)
			if s.decided() < forkBatch {
				return nil
			}
			ctx, cancel := h.ctx(forkWriteTimeout)
			defer cancel()
			return s.flush(ctx, false)
		}
		ahead := int64(f.seq) - s.base
		if ahead < forkMaxAhead {
			s.add(f)
			if s.decided() < forkBatch {
				return nil
			}
		}
		ctx, cancel := h.ctx(forkWriteTimeout)
		defer cancel()
		if ahead >= forkMaxAhead {
			// A long hole (a dropped span, a resync): what is held goes out, then the hole up
			// to this frame is reported as discarded.
			if err := s.flush(ctx, true); err != nil {
				return err
			}
			if err := s.discard(ctx, int64(f.seq)-s.base); err != nil {
				return err
			}
			s.add(f)
		}
		return s.flush(ctx, false)
	}
	for k, f := range first {
		if put(f) != nil {
			for _, f := range first[k+1:] { // held for the session that resumes this one
				if ahead := int64(f.seq) - s.base; ahead >= 0 && ahead < forkMaxAhead {
					s.add(f)
				}
			}
			return "write_failed"
		}
	}
	tick := time.NewTicker(forkBatch * frame.Duration)
	defer tick.Stop()
loop:
	for {
		select {
		case f := <-h.in:
			if put(f) != nil {
				return "write_failed"
			}
		case <-tick.C: // what waited its forkLagWait for a channel goes out without a new frame
			s.now = time.Now().UnixNano()
			if s.decided() > 0 {
				ctx, cancel := h.ctx(forkWriteTimeout)
				err := s.flush(ctx, false)
				cancel()
				if err != nil {
					return "write_failed"
				}
			}
		case <-s.disc:
			reason = "disconnect"
			break loop
		case <-s.recon:
			reason = "reconnect" // closed with that reason; a session that continues this one follows
			break loop
		case <-s.dead:
			select {
			case <-s.disc:
				reason = "disconnect"
				break loop
			default:
			}
			return "lost"
		case <-h.stop:
			for { // what is queued, then close
				select {
				case f := <-h.in:
					if put(f) != nil {
						return "write_failed"
					}
					continue
				default:
				}
				break
			}
			break loop
		}
	}
	ctx, cancel := h.ctx(forkCloseTimeout)
	defer cancel()
	if reason == "end" {
		if err := s.flush(ctx, h.stopReason == StopEnd); err != nil {
			return "write_failed"
		}
	}
	if s.send(ctx, "close", map[string]string{"reason": reason}) == nil {
		select {
		case <-s.closed:
		case <-s.dead:
			if reason == "end" {
				return "lost" // the end may not have arrived: a new session sends it again
			}
		case <-ctx.Done():
			reason = "close_timeout"
		}
	} else if reason == "end" {
		return "write_failed"
	}
	_ = s.conn.Close(websocket.StatusNormalClosure, "")
	if reason == "disconnect" && !forkDisconnectFinal(s.discWhy) {
		return "disconnected"
	}
	if reason == "reconnect" {
		return "reconnect_requested"
	}
	return reason
}

// add puts a frame in its slot (less than forkMaxAhead past base). A frame before base was
// sent already, or given up: it is counted late and dropped, as is a second copy of a slot.
func (s *forkSession) add(f forkFrame) {
	i := int(int64(f.seq) - s.base)
	if i < 0 {
		s.late++
		return
	}
	s.reach(i)
	sl := s.slots[f.ch]
	for len(sl) <= i {
		sl = append(sl, nil)
	}
	if len(sl[i]) == 0 {
		p := f.payload
		if len(p) != s.frameBytes { // normalised, so that the channels stay interleaved in step
			q := make([]byte, s.frameBytes)
			n := copy(q, p)
			for k := n; k < len(q); k++ {
				q[k] = s.silence
			}
			p = q
		}
		sl[i] = p
	}
	s.slots[f.ch] = sl
}

// gone marks the slots of a gap that lie within what is held (or could be): their frames will
// not come. Beyond that, a gap shows as the hole before the next frame.
func (s *forkSession) gone(f forkFrame) {
	from := max(int64(f.seq)-s.base, 0)
	to := min(int64(f.gapTo)-s.base, forkMaxAhead-1)
	if to < from {
		return
	}
	s.reach(int(to))
	sl := s.slots[f.ch]
	for int64(len(sl)) <= to {
		sl = append(sl, nil)
	}
	for i := from; i <= to; i++ {
		if sl[i] == nil {
			sl[i] = forkGone
		}
	}
	s.slots[f.ch] = sl
}

// reach notes that a channel reached slot i: the slots up to it that no channel had reached
// before start waiting for the others now.
func (s *forkSession) reach(i int) {
	for len(s.at) <= i {
		s.at = append(s.at, s.now)
	}
}

// decided returns how many slots from base can go out. The worker hands each leg's frames over
// in sequence order, so a slot below a channel's newest that the channel lacks will never come
// (it is silence, or discarded when no channel has it); a slot that a channel has not reached
// yet waits for it, at most forkLagWait (then that channel is silence there, and its frame, if
// it comes, is late).
func (s *forkSession) decided() int {
	n := 0
	for ; n < len(s.at); n++ {
		for _, sl := range s.slots {
			if n >= len(sl) && s.now-s.at[n] < int64(forkLagWait) {
				return n
			}
		}
	}
	return n
}

// flush sends the decided slots (every slot held, when last): a run of slots that some channel
// has as binary messages of at most forkBatch slots, the channels interleaved and a channel's
// missing frames as silence; a run that no channel has as `discarded`.
func (s *forkSession) flush(ctx context.Context, last bool) error {
	n := s.decided()
	if last {
		n = len(s.at)
	}
	has := func(i int) bool {
		for _, sl := range s.slots {
			if i < len(sl) && len(sl[i]) > 0 {
				return true
			}
		}
		return false
	}
	// What failed to go out counts as sent: it is among the slots a resumed session sends again.
	var err error
	i := 0
	for i < n && err == nil {
		j := i + 1
		for j < n && has(j) == has(i) && (!has(i) || j-i < forkBatch) {
			j++
		}
		if !has(i) {
			if j == n && !last {
				break // a hole at the end waits, so that it goes out as one discarded with what follows
			}
			err = s.discard(ctx, int64(j-i))
			i = j
			continue
		}
		out := s.out[:0]
		for k := i; k < j; k++ {
			for off := 0; off < s.frameBytes; off += s.frameBytes / 160 {
				for _, sl := range s.slots {
					if k < len(sl) && len(sl[k]) > 0 {
						out = append(out, sl[k][off:off+s.frameBytes/160]...)
					} else {
						if off == 0 {
							s.filled++
						}
						out = append(out, s.silence)
						if s.frameBytes == 320 {
							out = append(out, s.silence)
						}
					}
				}
			}
		}
		s.out = out
		err = s.conn.Write(ctx, websocket.MessageBinary, out)
		s.record(int64(j-i), out)
		s.base += int64(j - i)
		i = j
	}
	n = i
	for ch, sl := range s.slots {
		k := min(n, len(sl))
		clear(sl[:k])
		s.slots[ch] = append(sl[:0], sl[k:]...)
	}
	s.at = append(s.at[:0], s.at[n:]...)
	return err
}

// record keeps what went out for n slots from base (audio nil: discarded), the last forkReplay
// slots at least.
func (s *forkSession) record(n int64, audio []byte) {
	m := forkSent{base: s.base, n: n}
	if audio != nil {
		m.audio = append([]byte(nil), audio...)
	}
	s.sent = append(s.sent, m)
	s.sentSlots += n
	for len(s.sent) > 1 && s.sentSlots-s.sent[0].n >= forkReplay {
		s.sentSlots -= s.sent[0].n
		s.sent[0] = forkSent{}
		s.sent = s.sent[1:]
	}
}

// discard tells the receiver that n slots from base carry no audio (AudioHook `discarded`), and
// moves base past them.
func (s *forkSession) discard(ctx context.Context, n int64) error {
	if n <= 0 {
		return nil
	}
	err := s.send(ctx, "discarded", map[string]string{"start": forkPosition(s.base), "discarded": forkPosition(n)})
	s.record(n, nil)
	s.base += n
	s.discarded += n
	return err
}
