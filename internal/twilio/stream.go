package twilio

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/timeline"
	"github.com/callrouter/callrouter/internal/trace"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/coder/websocket"
	"github.com/rs/zerolog"
)

// Twilio sends a chunk every 20 ms while the call lasts; a track silent for silenceAfter gets
// gap-filled silence in real time, and chunks waiting for earlier ones are released after the
// reorder window even when nothing follows them (the watcher calls the cutters' Idle every idleTick).
const (
	silenceAfter = time.Second
	idleTick     = 50 * time.Millisecond
)

// maxMessage bounds one text message (a 20 ms media message is about 350 bytes; start carries
// the custom parameters).
const maxMessage = 16 << 10

// Bounds on what start may carry into the call's metadata.
const (
	maxParams   = 16
	maxParamLen = 256
)

// End reasons (the closed label set of callrouter_twilio_streams_ended_total).
const (
	reasonStop         = "hangup"            // stop
	reasonUnauthorized = "unauthorized"      // no or an unknown token
	reasonFormat       = "unsupported_media" // not μ-law 8 kHz mono, or no known track
	reasonProtocol     = "protocol_error"
	reasonRefused      = "placement_refused"
	reasonTooFast      = "too_fast"
	reasonTimeout      = "timeout"
	reasonLost         = "ws_lost"
	reasonShutdown     = "shutdown"
	reasonIngestEnded  = "ingest_ended"
)

// tracks maps Twilio track names (media.track, and dtmf.track's "_track" form) to leg names.
var tracks = map[string]string{"inbound": "caller", "outbound": "agent"}

type message struct {
	Event          string          `json:"event"`
	SequenceNumber string          `json:"sequenceNumber"`
	StreamSid      string          `json:"streamSid"`
	Start          *startMsg       `json:"start"`
	Media          *mediaMsg       `json:"media"`
	DTMF           *dtmfMsg        `json:"dtmf"`
	Mark           *markMsg        `json:"mark"`
	Stop           json.RawMessage `json:"stop"`
}

type startMsg struct {
	StreamSid        string            `json:"streamSid"`
	AccountSid       string            `json:"accountSid"`
	CallSid          string            `json:"callSid"`
	Tracks           []string          `json:"tracks"`
	CustomParameters map[string]string `json:"customParameters"`
	MediaFormat      struct {
		Encoding   string `json:"encoding"`
		SampleRate int    `json:"sampleRate"`
		Channels   int    `json:"channels"`
	} `json:"mediaFormat"`
}

type mediaMsg struct {
	Track     string `json:"track"`
	Chunk     string `json:"chunk"`
	Timestamp string `json:"timestamp"`
	Payload   string `json:"payload"`
}

type dtmfMsg struct {
	Track string `json:"track"`
	Digit string `json:"digit"`
}

type markMsg struct {
	Name string `json:"name"`
}

// closeError ends the stream with a WebSocket close code.
type closeError struct {
	code   websocket.StatusCode
	text   string
	reason string
}

func (e *closeError) Error() string { return "twilio: " + e.text }

func protocolErr(format string, a ...any) error {
	return &closeError{code: websocket.StatusPolicyViolation, text: fmt.Sprintf(format, a...), reason: reasonProtocol}
}

// stream is one Media Streams WebSocket.
type stream struct {
	s      *Server
	n      *ingest.Node
	conn   *websocket.Conn
	log    zerolog.Logger
	tenant string // set at start; released by ServeHTTP

	sid     string
	call    *ingest.Call
	legs    map[string]int // track → leg index
	cutters []*timeline.Cutter
	started time.Time
	placed  chan struct{} // closed once call is set
	mu      sync.Mutex    // the cutters: the reader pushes, the watcher releases and fills (Idle)
	buf     bytes.Buffer
	payload []byte
}

// run serves the stream until it ends.
func (st *stream) run() {
	st.placed = make(chan struct{})
	done := make(chan struct{})
	watched := make(chan struct{})
	log := st.log
	go func() {
		defer close(watched)
		defer guard.Recover("twilio_watch", log, nil)
		placed := st.placed
		var callDone <-chan struct{}
		var tick <-chan time.Time
		for {
			select {
			case <-done:
				return
			case <-placed:
				placed, callDone = nil, st.call.Done()
				t := time.NewTicker(idleTick)
				defer t.Stop()
				tick = t.C
			case now := <-tick:
				st.mu.Lock()
				for _, c := range st.cutters {
					c.Idle(now)
				}
				st.mu.Unlock()
			case <-callDone:
				_ = st.conn.Close(websocket.StatusNormalClosure, "call ended")
				return
			case <-st.s.stop:
				_ = st.conn.Close(websocket.StatusGoingAway, "server shutting down")
				return
			}
		}
	}()
	reason := st.read()
	close(done)
	<-watched
	if st.call != nil {
		for _, c := range st.cutters {
			c.Finish()
		}
		st.call.End(reason)
	}

	_ = st.conn.Close(websocket.StatusNormalClosure, "")
	st.s.m.ended.WithLabelValues(reason).Inc()
	st.log.Info().Str("reason", reason).Msg("twilio stream ended")
}

// read runs the read loop and returns why the stream ended.
func (st *stream) read() string {
	for {
		d := st.s.cfg.IdleTimeout
		if st.call == nil {
			d = st.s.cfg.StartTimeout
		}
		ctx, cancel := context.WithTimeout(context.Background(), d)
		typ, r, err := st.conn.Reader(ctx)
		if err == nil {
			st.buf.Reset()
			_, err = st.buf.ReadFrom(r)
		}
		timedOut := ctx.Err() != nil
		cancel()
		if err != nil {
			select {
			case <-st.s.stop:
				return reasonShutdown
			default:
			}
			if st.call != nil {
				select {
				case <-st.call.Done():
					return reasonIngestEnded
				default:
				}
			}
			if timedOut {
				return reasonTimeout
			}
			if !errors.Is(err, io.EOF) && websocket.CloseStatus(err) == -1 {
				st.log.Debug().Err(err).Msg("twilio read")
			}
			return reasonLost
		}
		if typ != websocket.MessageText {
			err = protocolErr("binary message")
		} else {
			var stop bool
			stop, err = st.onMessage(st.buf.Bytes())
			if stop {
				return reasonStop
			}
		}
		if err != nil {
			var ce *closeError
			if errors.As(err, &ce) {
				st.log.Info().Str("why", ce.text).Msg("twilio stream refused")
				_ = st.conn.Close(ce.code, ce.text)
				return ce.reason
			}
			return reasonLost
		}
	}
}

// onMessage handles one message; stop is true after "stop".
func (st *stream) onMessage(b []byte) (stop bool, err error) {
	var m message
	if err := json.Unmarshal(b, &m); err != nil {
		return false, protocolErr("malformed message")
	}
	if m.Event == "connected" {
		return false, nil
	}
	if st.call == nil && m.Event != "start" {
		return false, protocolErr("%s before start", m.Event)
	}
	if st.call != nil && m.StreamSid != st.sid {
		return false, protocolErr("streamSid %q is not the stream's", m.StreamSid)
	}
	switch m.Event {
	case "start":
		if st.call != nil || m.Start == nil {
			return false, protocolErr("start twice or without parameters")
		}
		return false, st.onStart(m.StreamSid, m.Start)
	case "media":
		if m.Media == nil {
			return false, protocolErr("media without parameters")
		}
		return false, st.onMedia(m.Media)
	case "dtmf":
		if m.DTMF != nil {
			st.onDTMF(m.DTMF)
		}
	case "mark":
		if m.Mark != nil {
			st.s.m.marks.Inc()
			st.publish("mark", map[string]string{"name": m.Mark.Name})
		}
	case "stop":
		return true, nil
	}
	return false, nil // other events: newer protocol versions; ignored
}

// onStart places the stream's call; its span, twilio.start, is the root of the call's setup
// trace.
func (st *stream) onStart(sid string, p *startMsg) (err error) {
	ctx, span := trace.Start(context.Background(), "twilio.start", trace.Server)
	defer func() {
		var ce *closeError
		if errors.As(err, &ce) {
			trace.Fail(span, fmt.Sprintf("%d %s", ce.code, ce.text))
		}
		trace.End(span, nil)
	}()
	if p.StreamSid != "" && sid == "" {
		sid = p.StreamSid
	}
	if sid == "" || len(sid) > 64 {
		return protocolErr("start without a streamSid")
	}
	tok := p.CustomParameters[st.s.cfg.TokenParam]
	tenant, ok := st.s.tenantOf(tok)
	if tok == "" || !ok {
		return &closeError{code: websocket.StatusPolicyViolation, text: "unauthorized", reason: reasonUnauthorized}
	}
	f := p.MediaFormat
	if f.Encoding != "audio/x-mulaw" || f.SampleRate != 8000 || f.Channels > 1 {
		return &closeError{code: websocket.StatusUnsupportedData, text: "media format must be audio/x-mulaw 8000 Hz mono", reason: reasonFormat}
	}
	legs := map[string]int{}
	var spec session.Spec
	for _, tr := range p.Tracks {
		tr = strings.TrimSuffix(tr, "_track")
		name, ok := tracks[tr]
		if !ok || legs[tr] != 0 || len(spec.Legs) > 0 && spec.Legs[0].Name == name {
			return &closeError{code: websocket.StatusUnsupportedData, text: "tracks must be inbound and/or outbound", reason: reasonFormat}
		}
		legs[tr] = len(spec.Legs)
		spec.Legs = append(spec.Legs, session.Leg{Index: uint8(len(spec.Legs)), Name: name, Codec: frame.CodecPCMU, Rate: 8000})
	}
	if len(spec.Legs) == 0 {
		return &closeError{code: websocket.StatusUnsupportedData, text: "no tracks", reason: reasonFormat}
	}
	if len(p.CustomParameters) > maxParams {
		return protocolErr("more than %d custom parameters", maxParams)
	}
	if !st.s.live.Tenant(tenant) {
		return &closeError{code: websocket.StatusTryAgainLater, text: fmt.Sprintf("too many streams for this tenant; retry after %v", st.s.cfg.RetryAfter), reason: reasonRefused}
	}
	st.tenant = tenant
	st.sid = sid
	spec.ID = session.ID{Tenant: tenant, Call: subjects.Encode("tw-" + sid)}
	spec.Meta = map[string]string{"source": "twilio", "stream_sid": sid, "call_sid": p.CallSid, "account_sid": p.AccountSid,
		"tracks": strings.Join(p.Tracks, ",")}
	for k, v := range p.CustomParameters {
		if k != st.s.cfg.TokenParam && len(k) <= 64 && len(v) <= maxParamLen { // never the token
			spec.Meta["param_"+k] = v
		}
	}
	st.log = st.log.With().Str("tenant", tenant).Str("call", spec.Call).Logger()
	trace.SetCall(span, tenant, spec.Call)
	ctx, cancel := context.WithTimeout(ctx, st.s.cfg.PlaceTimeout)
	c, err := st.n.StartCall(ctx, spec)
	cancel()
	if err != nil {
		after, _ := ingest.RetryAfter(err)
		if after <= 0 {
			after = st.s.cfg.RetryAfter
		}
		return &closeError{code: websocket.StatusTryAgainLater, text: fmt.Sprintf("placement refused; retry after %v", after), reason: reasonRefused}
	}
	st.legs, st.started = legs, time.Now()
	for i := range spec.Legs {
		leg := i
		st.cutters = append(st.cutters, timeline.New(timeline.Config{Clock: 8000, Window: st.s.cfg.ReorderWindow, MaxFill: timeline.MaxFill,
			SilenceAfter: silenceAfter, Silence: 0xff, Emit: func(p []byte, gap bool) { st.emit(leg, p, gap) }}))
	}
	st.call = c
	close(st.placed)
	st.log.Info().Strs("tracks", p.Tracks).Msg("twilio stream started")
	return nil
}

func (st *stream) emit(leg int, p []byte, gap bool) {
	var f frame.Flags
	if gap {
		f = frame.FlagGapFilled
	}
	_ = st.call.Send(leg, p, f)
}

func (st *stream) onMedia(m *mediaMsg) error {
	leg, ok := st.legs[strings.TrimSuffix(m.Track, "_track")]
	if !ok {
		st.s.m.media.WithLabelValues("unknown_track").Inc()
		return nil
	}
	chunk, err1 := strconv.ParseUint(m.Chunk, 10, 64)
	ms, err2 := strconv.ParseUint(m.Timestamp, 10, 64)
	if err1 != nil || err2 != nil || len(m.Payload) > base64.StdEncoding.EncodedLen(timeline.MaxPacket) {
		st.s.m.media.WithLabelValues("bad").Inc()
		return protocolErr("media: bad chunk %q, timestamp %q or payload", m.Chunk, m.Timestamp)
	}
	now := time.Now()
	if ahead := time.Duration(ms)*time.Millisecond - now.Sub(st.started); ahead > st.s.cfg.MaxAhead {
		return &closeError{code: websocket.StatusPolicyViolation, text: fmt.Sprintf("media %v ahead of real time", ahead.Round(time.Millisecond)), reason: reasonTooFast}
	}
	st.payload = st.payload[:cap(st.payload)]
	if len(st.payload) < timeline.MaxPacket {
		st.payload = make([]byte, timeline.MaxPacket)
	}
	n, err := base64.StdEncoding.Decode(st.payload, []byte(m.Payload))
	if err != nil || n == 0 {
		st.s.m.media.WithLabelValues("bad").Inc()
		return protocolErr("media: payload is not base64 audio")
	}
	st.s.m.media.WithLabelValues("ok").Inc()
	st.mu.Lock()
	st.cutters[leg].Push(now, uint16(chunk), uint32(ms*8), 0, false, st.payload[:n])
	st.mu.Unlock()
	return nil
}

// dtmfData is the body of a "dtmf" event (the fields SIP's have that Twilio can tell).
type dtmfData struct {
	Digit    string `json:"digit"`
	Leg      string `json:"leg"`
	LegIndex int    `json:"leg_index"`
	MediaTS  uint64 `json:"media_ts"` // samples on the leg's frame timeline when the digit arrived
	Seq      uint64 `json:"seq"`
	Rate     uint32 `json:"rate"`
	Via      string `json:"via"`
}

func (st *stream) onDTMF(d *dtmfMsg) {
	track := strings.TrimSuffix(d.Track, "_track")
	if track == "" {
		track = "inbound"
	}
	leg, ok := st.legs[track]
	if !ok || len(d.Digit) != 1 || !strings.Contains("0123456789*#ABCD", d.Digit) {
		return
	}
	st.s.m.dtmf.Inc()
	st.mu.Lock()
	pos := uint64(st.cutters[leg].Pos())
	st.mu.Unlock()
	st.publish("dtmf", dtmfData{Digit: d.Digit, Leg: tracks[track], LegIndex: leg, MediaTS: pos, Seq: pos / 160, Rate: 8000, Via: "twilio"})
}

// publish sends an event of the call on events.<tenant>.<call>.<kind>.
func (st *stream) publish(kind string, data any) {
	c := st.call
	_ = c.PublishEvent(wire.Event{Kind: kind, Epoch: c.Epoch(), Source: "ingest/twilio"}, data)
}
