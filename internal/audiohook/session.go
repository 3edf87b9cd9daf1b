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

	"github.com/callrouter/callrouter/internal/bus"
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

	call       *ingest.Call // nil for a connection probe or no media
	in         *mediaIn
	sel        media
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
		done:   make(chan struct{}), disconnect: make(chan struct{}), opened: make(chan struct{}), events: make(chan []byte, eventQueue)}
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
	stop, opened, disc := sess.s.stop, sess.opened, sess.disconnect
	for {
		select {
		case <-sess.done:
			return
		case <-stop:
			stop = nil
			sess.sendDisconnect(disconnectError, "server shutting down", reasonShutdown)
		case <-opened:
			opened, events = nil, sess.events
			if sess.call != nil {
				callDone = sess.call.Done()
				t := time.NewTicker(idleTick)
				defer t.Stop()
				tick = t.C
			}
		case now := <-tick:
			sess.in.idle(now)
		case b := <-events:
			if st := sess.getState(); st == stClosed || st == stDisconnecting {
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
	case stDisconnecting, stClosed:
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
	case st == stDisconnecting || st == stClosed:
		return nil // audio in flight when the session was ending
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

// emit sends one cut frame on the call.
func (sess *session) emit(leg int, p []byte, gap bool) {
	var f frame.Flags
	if gap {
		f = frame.FlagGapFilled
	}
	_ = sess.call.Send(leg, p, f) // ErrEnded: watch disconnects the session
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
	if !probe {
		var cc customConfig
		if len(p.CustomConfig) > 0 {
			_ = json.Unmarshal(p.CustomConfig, &cc)
		}
		if err := sess.place(ctx, p, sel, cc); err != nil {
			return err
		}
	}
	sess.mu.Lock()
	sess.sel, sess.openedAt = sel, time.Now()
	if sess.state == stOpening {
		sess.state = stActive
	}
	sess.mu.Unlock()
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
	if len(cc.Events) > 0 {
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
	sess.in = newMediaIn(sel, time.Now(), sess.emit)
	sess.mu.Unlock()
	sess.log.Info().Str("format", sel.Format).Strs("channels", sel.Channels).Msg("audiohook session opened")
	return nil
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
		sess.in.discard(sess.in.samples(start + span))
		data["position_ms"] = sess.in.duration().Milliseconds()
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
	if sess.in != nil {
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
	c := sess.call
	if c == nil {
		return
	}
	id := c.ID()
	_ = bus.PublishEvent(sess.n.NC(), wire.Event{Kind: kind, Tenant: id.Tenant, Call: id.Call, Epoch: c.Epoch(), Source: "ingest/audiohook"}, data)
}

// end ends the call and closes the WebSocket.
func (sess *session) end(reason string) {
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
		ev = ev.Dur("position", sess.in.duration()).Uint64("filled_frames", filled).Uint64("jumps", jumps)
	}
	ev.Msg("audiohook session ended")
}
