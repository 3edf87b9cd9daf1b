package audiohook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/ingest"
	callsession "github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/trace"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// Session states.
const (
	stOpening       = iota // waiting for "open"
	stActive               // opened: audio flows
	stPaused               // the client paused the stream
	stDisconnecting        // "disconnect" sent: waiting for the client's "close"
	stClosed               // "closed" sent: waiting for the client to close the WebSocket
	stMoved                // a session that continues this one took its call: waiting for "close" (reason reconnect)
)

// End reasons (the closed label set of callrouter_audiohook_sessions_ended_total and of the
// call's "end" event).
const (
	reasonEnd           = "hangup"            // close, reason end
	reasonClientError   = "client_error"      // close, reason error
	reasonClientClose   = "client_disconnect" // close, reason disconnect or reconnect
	reasonProtocol      = "protocol_error"    // the client broke the protocol: disconnect sent
	reasonUnauthorized  = "unauthorized"      // open's organization differs from the upgrade's
	reasonRefused       = "placement_refused" // no worker took the call
	reasonLost          = "ws_lost"           // the WebSocket ended without close
	reasonTimeout       = "timeout"           // no open, no message for the idle timeout, no close
	reasonShutdown      = "shutdown"          // the node stopped
	reasonIngestEnded   = "ingest_ended"      // ingest ended the call (media timeout, re-placement gave up)
	reasonTooFast       = "too_fast"          // audio ran ahead of the wall clock
	reasonUnsupported   = "no_supported_media"
	reasonReconnected   = "reconnected" // a session that continues this one took its call, which goes on
	writeTimeout        = 5 * time.Second
	idleTick            = 100 * time.Millisecond // how often a silent stream's frames are filled
	eventQueue          = 64
	nullUUID            = "00000000-0000-0000-0000-000000000000"
	maxEventKinds       = 16
	disconnectCompleted = "completed"
	disconnectError     = "error"
)

// session is one AudioHook WebSocket session.
type session struct {
	s      *Server
	n      *ingest.Node
	conn   *websocket.Conn
	tenant string
	id     string // Audiohook-Session-Id: the session's id in every message
	callID string
	org    string
	corr   string
	log    zerolog.Logger

	sendMu    sync.Mutex
	serverSeq atomic.Int64 // last seq sent
	clientSeq atomic.Int64 // last seq received

	mu         sync.Mutex
	state      int
	reason     string        // why the session ends, set once
	disconnect chan struct{} // closed when a disconnect is sent: the reader bounds its wait
	discOnce   sync.Once

	call       *ingest.Call // nil for a connection probe or no media, or once another session took it
	in         *mediaIn
	sel        media
	conv       string        // open's conversationId
	moved      chan struct{} // closed when a session that continues this one takes its call
	posBase    time.Duration // the call's position at this session's position 0 (a continuing session)
	openedAt   time.Time
	pausedAt   time.Time
	sub        *nats.Subscription
	kinds      map[string]bool
	events     chan []byte
	opened     chan struct{} // closed once "opened" is sent
	done       chan struct{}
	readCtx    context.Context // cancelled when the client did not close in time
	cancelRead context.CancelFunc
	buf        bytes.Buffer
}

func newSession(s *Server, n *ingest.Node, conn *websocket.Conn, tenant, id, org, corr string) *session {
	sess := &session{s: s, n: n, conn: conn, tenant: tenant, id: id, org: org, corr: corr,
		callID: callID(id),
		done:   make(chan struct{}), disconnect: make(chan struct{}), opened: make(chan struct{}), moved: make(chan struct{}),
		events: make(chan []byte, eventQueue)}
	sess.log = s.log.With().Str("tenant", tenant).Str("session", id).Str("call", sess.callID).Logger()
	sess.readCtx, sess.cancelRead = context.WithCancel(context.Background())
	return sess
}

// callID is the call of a session: "ah-" and the session id (a UUID), encoded if it is not a
// valid subject token.
func callID(session string) string {
	call := "ah-" + session
	if !subjects.Valid(call) {
		call = subjects.Encode(call)
	}
	return call
}

// run serves the session until it ends; it returns once every goroutine it started has.
func (sess *session) run() {
	var g sync.WaitGroup
	defer g.Wait()
	defer close(sess.done)
	g.Add(1)
	go func() {
		defer g.Done()
		defer guard.Recover("audiohook_watch", sess.log, nil)
		sess.watch()
	}()
	reason := sess.read()
	sess.cancelRead()
	sess.end(reason)
}

// watch disconnects the session when the node stops or ingest ends its call, forwards call
// events once "opened" is sent, and gives the client CloseTimeout to close after a disconnect.
func (sess *session) watch() {
	var callDone <-chan struct{}
	var events chan []byte
	var closeBy, tick <-chan time.Time
	stop, opened, disc, moved := sess.s.stop, sess.opened, sess.disconnect, sess.moved
	for {
		select {
		case <-sess.done:
			return
		case <-stop:
			stop = nil
			sess.sendDisconnect(disconnectError, "server shutting down", reasonShutdown)
		case <-opened:
			opened, events = nil, sess.events
			sess.mu.Lock()
			c := sess.call // nil once a continuing session took it
			sess.mu.Unlock()
			if c != nil {
				callDone = c.Done()
				t := time.NewTicker(idleTick)
				defer t.Stop()
				tick = t.C
			}
		case <-moved:
			// The call went on with the session that continues this one: its end, its
			// silence and its events are that session's now.
			moved, callDone, tick = nil, nil, nil
		case now := <-tick:
			sess.in.idle(now)
		case b := <-events:
			if st := sess.getState(); st == stClosed || st == stDisconnecting || st == stMoved {
				sess.s.m.events.WithLabelValues("dropped").Inc() // nothing after closed or disconnect
				continue
			}
			if err := sess.send("event", json.RawMessage(b), sess.clientSeq.Load()); err != nil {
				sess.s.m.events.WithLabelValues("dropped").Inc()
			} else {
				sess.s.m.events.WithLabelValues("sent").Inc()
			}
		case <-callDone:
			callDone = nil
			sess.sendDisconnect(disconnectCompleted, "the call ended", reasonIngestEnded)
		case <-disc:
			disc = nil
			t := time.NewTimer(sess.s.cfg.CloseTimeout)
			defer t.Stop()
			closeBy = t.C
		case <-closeBy:
			closeBy = nil
			sess.cancelRead()
		}
	}
}

// send writes one server message with the next seq.
func (sess *session) send(typ string, params any, clientSeq int64) error {
	sess.sendMu.Lock()
	defer sess.sendMu.Unlock()
	seq := sess.serverSeq.Load() + 1
	b, err := json.Marshal(serverMsg{Version: "2", ID: sess.id, Type: typ, Seq: seq, ClientSeq: clientSeq, Parameters: params})
	if err != nil {
		return err
	}
	// Counted as sent before the write returns: the client may answer (serverseq) before it does.
	// A failed write ends the session anyway.
	sess.serverSeq.Store(seq)
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	return sess.conn.Write(ctx, websocket.MessageText, b)
}

// sendDisconnect sends "disconnect" once and waits (in the reader) for the client's close; the
// session then ends with reason.
func (sess *session) sendDisconnect(why, info, reason string) {
	sess.discOnce.Do(func() {
		sess.mu.Lock()
		if sess.state == stClosed {
			sess.mu.Unlock()
			return
		}
		if sess.reason == "" {
			sess.reason = reason
		}
		sess.state = stDisconnecting
		sess.mu.Unlock()
		sess.log.Info().Str("reason", why).Str("info", info).Msg("audiohook disconnect")
		if err := sess.send("disconnect", disconnectParams{Reason: why, Info: info}, sess.clientSeq.Load()); err != nil {
			sess.log.Info().Err(err).Msg("audiohook disconnect not sent")
			_ = sess.conn.Close(websocket.StatusInternalError, "disconnect not sent")
		}
		close(sess.disconnect)
	})
}

// timeout is how long the next read may take in the current state.
func (sess *session) timeout() time.Duration {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	switch sess.state {
	case stOpening:
		return sess.s.cfg.OpenTimeout
	case stDisconnecting, stClosed, stMoved:
		return sess.s.cfg.CloseTimeout
	}
	return sess.s.cfg.IdleTimeout
}

func (sess *session) getState() int {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	return sess.state
}

// read runs the session's read loop and returns why it ended.
func (sess *session) read() (reason string) {
	for {
		ctx, cancel := context.WithTimeout(sess.readCtx, sess.timeout())
		typ, r, err := sess.conn.Reader(ctx)
		if err == nil {
			sess.buf.Reset()
			_, err = sess.buf.ReadFrom(r)
		}
		timedOut := ctx.Err() != nil
		cancel()
		if err != nil {
			return sess.readFailed(err, timedOut)
		}
		if typ == websocket.MessageBinary {
			err = sess.onAudio(sess.buf.Bytes())
		} else {
			err = sess.onText(sess.buf.Bytes())
		}
		if err != nil {
			var pe *protoError
			if errors.As(err, &pe) {
				sess.sendDisconnect(pe.disconnect, pe.info, pe.reason)
				continue
			}
			return reasonLost
		}
	}
}

// readFailed decides why a failed read ends the session.
func (sess *session) readFailed(err error, timedOut bool) string {
	sess.mu.Lock()
	st, reason := sess.state, sess.reason
	sess.mu.Unlock()
	switch {
	case st == stClosed:
		return reason // the client closed the WebSocket after "closed", as it should
	case st == stMoved:
		return reasonReconnected // however the client leaves it, the call goes on without it
	case reason != "":
		return reason // after a disconnect, however the client went
	case timedOut:
		return reasonTimeout
	case websocket.CloseStatus(err) == websocket.StatusMessageTooBig:
		return reasonProtocol
	}
	if !errors.Is(err, io.EOF) && websocket.CloseStatus(err) == -1 {
		sess.log.Debug().Err(err).Msg("audiohook read")
	}
	return reasonLost
}

// protoError is a protocol violation: the session sends "disconnect" and waits for "close".
type protoError struct {
	disconnect string
	info       string
	reason     string
}

func (e *protoError) Error() string { return "audiohook: " + e.info }

func violation(format string, a ...any) error {
	return &protoError{disconnect: disconnectError, info: fmt.Sprintf(format, a...), reason: reasonProtocol}
}

// onAudio takes one binary message.
func (sess *session) onAudio(b []byte) error {
	switch st := sess.getState(); {
	case st == stDisconnecting || st == stClosed || st == stMoved:
		return nil // audio in flight when the session was ending, or handed over
	case st == stOpening || sess.sel.Format == "":
		return violation("audio before a media format was selected")
	}
	if sess.in == nil {
		return nil // a connection probe: nothing is placed
	}
	if len(b) > sess.s.cfg.MaxBinary {
		return violation("binary message of %d bytes (at most %d)", len(b), sess.s.cfg.MaxBinary)
	}
	now := time.Now()
	if err := sess.checkAhead(sess.in.after(len(b)), now); err != nil {
		return err
	}
	if err := sess.in.push(now, b); err != nil {
		return violation("%v", err)
	}
	return nil
}

// checkAhead refuses a stream position more than MaxAhead ahead of the wall clock since
// "opened": a client sending faster than real time, or reporting discards that never happened,
// would make ingest publish (and fill) media faster than any call makes it.
func (sess *session) checkAhead(pos time.Duration, now time.Time) error {
	if ahead := pos - now.Sub(sess.openedAt); ahead > sess.s.cfg.MaxAhead {
		return &protoError{disconnect: disconnectError, info: fmt.Sprintf("audio %v ahead of real time", ahead.Round(time.Millisecond)), reason: reasonTooFast}
	}
	return nil
}

// emitTo returns what sends the frames cut from a stream on call c: whichever session feeds the
// stream (one that continues another takes it over), they go to the same call.
func emitTo(c *ingest.Call) func(leg int, p []byte, gap bool) {
	return func(leg int, p []byte, gap bool) { emit(c, leg, p, gap) }
}

// emit sends one cut frame on the call.
func emit(c *ingest.Call, leg int, p []byte, gap bool) {
	var f frame.Flags
	if gap {
		f = frame.FlagGapFilled
	}
	_ = c.Send(leg, p, f) // ErrEnded: the session's watch disconnects it
}

// onText takes one text message.
func (sess *session) onText(b []byte) error {
	if len(b) > maxText {
		return violation("text message of %d bytes (at most %d)", len(b), maxText)
	}
	var m clientMsg
	if err := json.Unmarshal(b, &m); err != nil {
		return violation("malformed message: %v", err)
	}
	switch {
	case m.Version != "2":
		return violation("version %q (want 2)", m.Version)
	case m.ID != sess.id:
		return violation("id %q is not the session's", m.ID)
	case m.Seq != sess.clientSeq.Load()+1:
		return violation("seq %d (want %d)", m.Seq, sess.clientSeq.Load()+1)
	case m.ServerSeq > sess.serverSeq.Load() || m.ServerSeq < 0:
		return violation("serverseq %d (last sent %d)", m.ServerSeq, sess.serverSeq.Load())
	}
	sess.clientSeq.Store(m.Seq)
	st := sess.getState()
	if st == stClosed {
		return violation("%s after close", m.Type)
	}
	if st == stOpening && m.Type != "open" {
		return violation("%s before open", m.Type)
	}
	if st == stMoved && m.Type != "ping" && m.Type != "close" && m.Type != "error" {
		return nil // the call is the continuing session's: this one only closes
	}
	switch m.Type {
	case "open":
		if st != stOpening {
			return violation("open twice")
		}
		return sess.onOpen(m)
	case "ping":
		return sess.reply("pong", empty{}, m.Seq)
	case "close":
		return sess.onClose(m)
	case "update":
		var p updateParams
		_ = json.Unmarshal(m.Parameters, &p)
		sess.publish("audiohook", map[string]any{"what": "update", "language": p.Language})
	case "discarded":
		return sess.onDiscarded(m)
	case "paused":
		sess.onPaused(m)
	case "resumed":
		return sess.onResumed(m)
	case "error":
		var p errorParams
		_ = json.Unmarshal(m.Parameters, &p)
		code, ok := clientErrCodes[p.Code]
		if !ok {
			code = "other"
		}
		sess.s.m.clientErr.WithLabelValues(code).Inc()
		sess.log.Warn().Int("code", p.Code).Str("message", p.Message).Msg("audiohook client error")
		sess.publish("audiohook", map[string]any{"what": "error", "code": p.Code, "message": p.Message})
	default:
		return violation("unknown message type %q", m.Type)
	}
	return nil
}

// reply sends a response; a failed write ends the session.
func (sess *session) reply(typ string, params any, clientSeq int64) error {
	if err := sess.send(typ, params, clientSeq); err != nil {
		return err
	}
	return nil
}

// choose picks the offered format this server takes: PCMU or L16 at 8 kHz, channels from
// external and internal without repeats; the most channels first, then the first offered.
func choose(offers []media) (media, bool) {
	var best media
	found := false
	for _, m := range offers {
		if m.Type != "audio" || (m.Format != "PCMU" && m.Format != "L16") || m.Rate != 8000 || len(m.Channels) == 0 || len(m.Channels) > 2 {
			continue
		}
		if _, ok := channels[m.Channels[0]]; !ok {
			continue
		}
		if len(m.Channels) == 2 {
			if _, ok := channels[m.Channels[1]]; !ok || m.Channels[0] == m.Channels[1] {
				continue
			}
		}
		if !found || len(m.Channels) > len(best.Channels) {
			best, found = m, true
		}
	}
	return best, found
}

// onOpen answers "open"; its span, audiohook.open, is the root of the call's setup trace.
func (sess *session) onOpen(m clientMsg) (err error) {
	ctx, span := trace.Start(context.Background(), "audiohook.open", trace.Server, trace.Call(sess.tenant, sess.callID)...)
	defer func() {
		var pe *protoError
		if errors.As(err, &pe) {
			trace.Fail(span, pe.disconnect+": "+pe.info)
		}
		trace.End(span, nil)
	}()
	var p openParams
	if err := json.Unmarshal(m.Parameters, &p); err != nil {
		return violation("malformed open parameters: %v", err)
	}
	if p.OrganizationID != sess.org {
		return &protoError{disconnect: "unauthorized", info: "organizationId differs from Audiohook-Organization-Id", reason: reasonUnauthorized}
	}
	sel, ok := choose(p.Media)
	if !ok {
		return &protoError{disconnect: disconnectError, info: "no offered media format is supported (PCMU or L16, 8000 Hz, external/internal)", reason: reasonUnsupported}
	}
	probe := p.ConversationID == nullUUID
	openedAt, state := time.Now(), stActive
	if !probe {
		var cc customConfig
		if len(p.CustomConfig) > 0 {
			_ = json.Unmarshal(p.CustomConfig, &cc)
		}
		if at, st, ok := sess.continues(p, sel, m.Position); ok {
			openedAt, state = at, st
			sess.subscribe(cc)
		} else if err := sess.place(ctx, p, sel, cc); err != nil {
			return err
		}
	}
	sess.mu.Lock()
	sess.sel, sess.conv, sess.openedAt = sel, p.ConversationID, openedAt
	if sess.state == stOpening {
		sess.state = state
	}
	sess.mu.Unlock()
	if sess.call != nil {
		sess.s.holding(sess)
	}
	if err := sess.reply("opened", openedParams{Media: []media{sel}}, m.Seq); err != nil {
		return err
	}
	close(sess.opened)
	return nil
}

// place starts the call: legs from the selected channels, metadata from open.
func (sess *session) place(ctx context.Context, p openParams, sel media, cc customConfig) error {
	call := sess.callID
	spec := callsession.Spec{ID: callsession.ID{Tenant: sess.tenant, Call: call}, Meta: map[string]string{
		"source": "audiohook", "audiohook_session": sess.id, "organization": p.OrganizationID, "conversation": p.ConversationID,
		"participant": p.Participant.ID, "ani": p.Participant.ANI, "dnis": p.Participant.DNIS, "correlation": sess.corr,
		"format": sel.Format, "language": p.Language}}
	for i, ch := range sel.Channels {
		spec.Legs = append(spec.Legs, callsession.Leg{Index: uint8(i), Name: channels[ch], Codec: codecOf(sel), Rate: uint32(sel.Rate)})
	}
	sess.subscribeTo(call, cc)
	// The client gives up on "opened" after its open timeout (5 s for Genesys): placing takes no
	// longer than ours.
	ctx, cancel := context.WithTimeout(ctx, sess.s.cfg.OpenTimeout)
	defer cancel()
	c, err := sess.n.StartCall(ctx, spec)
	if err != nil {
		info := "placement failed: " + err.Error()
		if after, ok := ingest.RetryAfter(err); ok {
			info = fmt.Sprintf("503 service unavailable: %v; retryAfter %s", err, formatDuration(after))
		}
		sess.log.Warn().Err(err).Msg("audiohook call not placed")
		return &protoError{disconnect: disconnectError, info: info, reason: reasonRefused}
	}
	sess.mu.Lock()
	sess.call = c
	sess.in = newMediaIn(sel, time.Now(), emitTo(c))
	sess.mu.Unlock()
	sess.log.Info().Str("format", sel.Format).Strs("channels", sel.Channels).Msg("audiohook session opened")
	return nil
}

// subscribe asks for the events cc names of the call the session holds.
func (sess *session) subscribe(cc customConfig) {
	sess.subscribeTo(sess.call.ID().Call, cc)
}

func (sess *session) subscribeTo(call string, cc customConfig) {
	if len(cc.Events) == 0 {
		return
	}
	sess.kinds = map[string]bool{}
	for _, k := range cc.Events {
		if len(sess.kinds) < maxEventKinds && subjects.Valid(k) {
			sess.kinds[k] = true
		}
	}
	sub, err := sess.n.NC().Subscribe(subjects.EventsCall(sess.tenant, call), guard.Handler("audiohook_events", sess.log, sess.onEvent))
	if err == nil {
		sess.sub = sub
	}
}

// continues takes over the call of the session of this server that open's continuedSessions
// names (the latest first), if it may: the same tenant (API key), organization and conversation,
// the same media selected, and still streaming. It returns when that call's stream was opened
// (the bound on audio ahead of real time runs from there) and the state this session starts in,
// or ok false: a session on another node, ended, or not the client's is not continued, and this
// session places a call of its own.
func (sess *session) continues(p openParams, sel media, position string) (openedAt time.Time, state int, ok bool) {
	for i := len(p.ContinuedSessions) - 1; i >= 0; i-- {
		id := p.ContinuedSessions[i].ID
		if id == sess.id {
			continue
		}
		if old := sess.s.holder(sess.tenant, id); old != nil {
			if openedAt, state, ok = sess.takeOver(old, p, sel, position); ok {
				return openedAt, state, true
			}
			sess.log.Info().Str("continues", id).Msg("audiohook continued session not taken over: another organization, conversation or media, or not streaming")
		}
	}
	if len(p.ContinuedSessions) > 0 {
		sess.log.Info().Int("continued", len(p.ContinuedSessions)).Msg("audiohook continued sessions not held here: a new call")
	}
	return time.Time{}, 0, false
}

func sameMedia(a, b media) bool {
	if a.Type != b.Type || a.Format != b.Format || a.Rate != b.Rate || len(a.Channels) != len(b.Channels) {
		return false
	}
	for i := range a.Channels {
		if a.Channels[i] != b.Channels[i] {
			return false
		}
	}
	return true
}

// takeOver moves old's call to this session, in one step under old's lock: old then neither ends
// the call nor fills its silence, sends its events or takes audio (it waits for its "close",
// reason reconnect), and the stream goes on on the call's timeline where old left it. This
// session's position 0 (open's position) is the call's position now, whatever old's counted.
func (sess *session) takeOver(old *session, p openParams, sel media, position string) (time.Time, int, bool) {
	old.mu.Lock()
	if old.org != sess.org || old.conv != p.ConversationID || !sameMedia(old.sel, sel) || old.call == nil ||
		(old.state != stActive && old.state != stPaused) {
		old.mu.Unlock()
		return time.Time{}, 0, false
	}
	c, in, openedAt, pausedAt, st := old.call, old.in, old.openedAt, old.pausedAt, old.state
	old.state, old.call = stMoved, nil
	old.mu.Unlock()
	close(old.moved)
	sess.s.released(old)
	pos, _ := parseDuration(position)
	sess.mu.Lock()
	sess.call, sess.in, sess.pausedAt = c, in, pausedAt
	at := in.position()
	sess.posBase = at - pos
	sess.mu.Unlock()
	sess.log.Info().Str("continues", old.id).Dur("position", at).Msg("audiohook session continues the call")
	sess.publish("audiohook", map[string]any{"what": "reconnected", "session": sess.id, "continues": old.id, "position_ms": at.Milliseconds()})
	return openedAt, st, true
}

// onEvent queues a call event the client asked for; a full queue drops it (counted).
func (sess *session) onEvent(m *nats.Msg) {
	e, err := subjects.ParseEvent(m.Subject)
	if err != nil || !sess.kinds[e.Kind] {
		return
	}
	b, _ := json.Marshal(eventParams{Entities: []eventEntity{{Type: e.Kind, Data: json.RawMessage(m.Data)}}})
	select {
	case sess.events <- b:
	default:
		sess.s.m.events.WithLabelValues("dropped").Inc()
	}
}

func (sess *session) onDiscarded(m clientMsg) error {
	var p discardedParams
	if err := json.Unmarshal(m.Parameters, &p); err != nil {
		return violation("malformed discarded parameters")
	}
	start, err1 := parseDuration(p.Start)
	span, err2 := parseDuration(p.Discarded)
	if err1 != nil || err2 != nil {
		return violation("discarded: bad start %q or discarded %q", p.Start, p.Discarded)
	}
	sess.s.m.discarded.Add(span.Seconds())
	data := map[string]any{"cause": "discarded", "start_ms": start.Milliseconds(), "ms": span.Milliseconds()}
	if sess.in != nil {
		if err := sess.checkAhead(start+span, time.Now()); err != nil {
			return err
		}
		// The span is filled when the next audio arrives, after the audio before it.
		sess.in.discard(sess.in.samples(sess.posBase + start + span))
		data["position_ms"] = sess.in.position().Milliseconds()
	}
	sess.publish("gap", data)
	return nil
}

// onPaused holds the call's pause for the stream (ingest.PauseStream): until "resumed", every
// frame, the silence filled in real time included, is published flagged paused, so workers
// account the span as paused rather than as filled media. An operator's pause is held apart:
// neither lifts the other.
func (sess *session) onPaused(m clientMsg) {
	sess.mu.Lock()
	c := sess.call
	if sess.state == stActive {
		sess.state, sess.pausedAt = stPaused, time.Now()
	}
	sess.mu.Unlock()
	if c != nil {
		c.SetPausedBy(ingest.PauseStream, true, "audiohook paused", "audiohook/"+sess.id)
	}
	sess.publish("audiohook", map[string]any{"what": "paused", "position": m.Position})
}

func (sess *session) onResumed(m clientMsg) error {
	var p discardedParams
	_ = json.Unmarshal(m.Parameters, &p)
	sess.mu.Lock()
	c := sess.call
	var paused time.Duration
	if sess.state == stPaused {
		paused = time.Since(sess.pausedAt)
		sess.state = stActive
	}
	sess.mu.Unlock()
	if c != nil {
		c.SetPausedBy(ingest.PauseStream, false, "audiohook resumed", "audiohook/"+sess.id)
	}
	sess.s.m.paused.Add(paused.Seconds())
	sess.publish("audiohook", map[string]any{"what": "resumed", "paused_ms": paused.Milliseconds(), "discarded": p.Discarded, "position": m.Position})
	return nil
}

func (sess *session) onClose(m clientMsg) error {
	var p closeParams
	_ = json.Unmarshal(m.Parameters, &p)
	reason := reasonEnd
	switch p.Reason {
	case "error":
		reason = reasonClientError
	case "disconnect", "reconnect":
		reason = reasonClientClose
	}
	sess.mu.Lock()
	moved := sess.state == stMoved
	sess.mu.Unlock()
	if moved {
		// Handed over: whatever the client says, the call goes on with the session that
		// continues this one (close reason reconnect is what the protocol asks for).
		reason = reasonReconnected
	} else if sess.in != nil {
		sess.in.finish()
	}
	sess.mu.Lock()
	if sess.reason == "" {
		sess.reason = reason
	}
	sess.state = stClosed
	sess.mu.Unlock()
	return sess.reply("closed", empty{}, m.Seq)
}

// publish sends an event of the call (when there is one) on events.<tenant>.<call>.<kind>.
func (sess *session) publish(kind string, data any) {
	sess.mu.Lock()
	c := sess.call
	sess.mu.Unlock()
	if c == nil {
		return
	}
	_ = c.PublishEvent(wire.Event{Kind: kind, Epoch: c.Epoch(), Source: "ingest/audiohook"}, data)
}

// end ends the call and closes the WebSocket.
func (sess *session) end(reason string) {
	sess.s.released(sess)
	if sess.sub != nil {
		_ = sess.sub.Unsubscribe()
	}
	sess.mu.Lock()
	c := sess.call
	sess.mu.Unlock()
	if c != nil {
		if sess.in != nil {
			sess.in.finish()
		}
		c.End(reason)
	}
	code := websocket.StatusNormalClosure
	if reason == reasonShutdown {
		code = websocket.StatusGoingAway
	}
	_ = sess.conn.Close(code, "")
	sess.s.m.ended.WithLabelValues(reason).Inc()
	ev := sess.log.Info().Str("reason", reason)
	if sess.in != nil {
		filled, jumps := sess.in.stats()
		ev = ev.Dur("position", sess.in.position()).Uint64("filled_frames", filled).Uint64("jumps", jumps)
	}
	ev.Msg("audiohook session ended")
}
