package whip

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
	"github.com/rs/zerolog"
)

// Session states, as sent on the event stream ("state" events).
const (
	stateConnecting = "connecting"
	stateConnected  = "connected"
	stateEnded      = "ended"
)

// End reasons this package gives (ingest's own, such as media_timeout from its reaper, pass
// through as "ingest_ended").
const (
	reasonDelete         = "hangup"
	reasonICEFailed      = "ice_failed"
	reasonDTLSFailed     = "dtls_failed"
	reasonClosed         = "closed"
	reasonConnectTimeout = "connect_timeout"
	reasonMediaTimeout   = "media_timeout"
	reasonShutdown       = "shutdown"
	reasonIngestEnded    = "ingest_ended"
	reasonError          = "error" // the session's own code failed (a panic in its media loop or a callback)
)

// session is one WHIP session: a peer connection and the call it feeds.
type session struct {
	s      *Server
	id     string // the unguessable token in the session URL
	tenant string
	callID string
	codec  *codec
	log    zerolog.Logger

	pc     *webrtc.PeerConnection
	call   *ingest.Call
	sub    *nats.Subscription
	events *eventLog

	placed   chan struct{} // closed once call is set (or the session ended before)
	done     chan struct{} // closed when the session has ended
	endOnce  sync.Once
	slotOnce sync.Once
	track    atomic.Bool // an audio track is being read

	mu     sync.Mutex
	state  string
	reason string
}

func randomToken(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func newSession(s *Server, tenant string, c *codec) *session {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	sess := &session{s: s, id: randomToken(18), tenant: tenant, callID: "whip-" + hex.EncodeToString(b), codec: c,
		events: newEventLog(s.cfg.EventBuffer, s.cfg.SSEClients, s.m), placed: make(chan struct{}), done: make(chan struct{}),
		state: stateConnecting}
	sess.log = s.log.With().Str("tenant", tenant).Str("call", sess.callID).Logger()
	return sess
}

// setState records a state change and puts it on the event stream.
func (sess *session) setState(state, reason string) {
	sess.mu.Lock()
	if sess.state == stateEnded || sess.state == state {
		sess.mu.Unlock()
		return
	}
	sess.state, sess.reason = state, reason
	sess.mu.Unlock()
	b, _ := json.Marshal(map[string]any{"kind": "state", "source": "ingest/whip", "state": state, "reason": reason, "tenant": sess.tenant, "call": sess.callID,
		"codec": sess.codec.name, "time": time.Now().UTC()})
	sess.events.add("state", b)
}

// onEvent puts a NATS event of the call on the event stream.
func (sess *session) onEvent(m *nats.Msg) {
	kind := m.Subject
	if e, err := subjects.ParseEvent(m.Subject); err == nil {
		kind = e.Kind
	}
	sess.events.add(kind, append([]byte(nil), m.Data...))
}

// failed is the onPanic of the session's goroutines and pion callbacks (defer guard.Recover(where,
// sess.log, sess.failed)): a panic there ends this session with reason error, never the process.
func (sess *session) failed(any) { sess.goEnd(reasonError) }

// onConnectionState follows the peer connection: connected, or failed (ICE or DTLS), or closed.
func (sess *session) onConnectionState(st webrtc.PeerConnectionState) {
	defer guard.Recover("whip_callback", sess.log, sess.failed)
	switch st {
	case webrtc.PeerConnectionStateConnected:
		sess.setState(stateConnected, "")
	case webrtc.PeerConnectionStateFailed:
		reason := reasonDTLSFailed
		if sess.pc.ICEConnectionState() == webrtc.ICEConnectionStateFailed {
			reason = reasonICEFailed
		}
		sess.goEnd(reason)
	case webrtc.PeerConnectionStateClosed:
		sess.goEnd(reasonClosed)
	}
}

// goEnd ends the session on a goroutine of its own (pion callbacks must not block on Close).
func (sess *session) goEnd(reason string) {
	sess.s.spawn(func() { sess.end(reason) })
}

// watch ends the session when ingest ends the call, when it does not connect in time, or when the
// server stops.
func (sess *session) watch() {
	connect := time.NewTimer(sess.s.cfg.ConnectTimeout)
	defer connect.Stop()
	for {
		select {
		case <-sess.call.Done():
			sess.end(reasonIngestEnded)
			return
		case <-connect.C:
			if sess.pc.ConnectionState() != webrtc.PeerConnectionStateConnected {
				sess.end(reasonConnectTimeout)
				return
			}
		case <-sess.s.stop:
			sess.end(reasonShutdown)
			return
		case <-sess.done:
			return
		}
	}
}

// end ends the call and closes the peer connection; the session URL lingers for Config.Linger.
func (sess *session) end(reason string) {
	sess.endOnce.Do(func() {
		sess.setState(stateEnded, reason)
		close(sess.done)
		select {
		case <-sess.placed:
			if sess.call != nil {
				sess.call.End(reason)
			}
		default:
		}
		if err := sess.pc.Close(); err != nil {
			sess.log.Debug().Err(err).Msg("peer connection close")
		}
		sess.releaseSlot()
		sess.s.m.ended.WithLabelValues(reason).Inc()
		sess.log.Info().Str("reason", reason).Msg("whip session ended")
		sess.s.spawn(func() {
			t := time.NewTimer(sess.s.cfg.Linger)
			defer t.Stop()
			select {
			case <-t.C:
			case <-sess.s.stop:
			}
			sess.s.forget(sess)
		})
	})
}

// abort undoes a session whose POST failed: nothing was placed, nothing is reported.
func (sess *session) abort() {
	sess.endOnce.Do(func() {
		sess.mu.Lock()
		sess.state = stateEnded
		sess.mu.Unlock()
		close(sess.done)
		if sess.pc != nil {
			_ = sess.pc.Close()
		}
		sess.forget()
	})
	sess.releaseSlot()
}

func (sess *session) currentState() string {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	return sess.state
}

func (sess *session) endReason() string {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	return sess.reason
}

func (sess *session) releaseSlot() {
	sess.slotOnce.Do(func() { sess.s.releaseSlot(sess.tenant) })
}

// forget drops the session's event subscription and closes its event streams.
func (sess *session) forget() {
	if sess.sub != nil {
		_ = sess.sub.Unsubscribe()
	}
	sess.events.close()
}

// onTrack reads the first audio track until the call ends.
func (sess *session) onTrack(t *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
	defer guard.Recover("whip_callback", sess.log, sess.failed)
	if t.Kind() != webrtc.RTPCodecTypeAudio || !strings.EqualFold(t.Codec().MimeType, sess.codec.params.MimeType) ||
		!sess.track.CompareAndSwap(false, true) {
		return
	}
	sess.s.spawn(func() { sess.read(t) })
}

// read is the session's media loop: RTP in, 20 ms frames out. The read deadline doubles as the
// reorder window's timer and the media timeout.
func (sess *session) read(t *webrtc.TrackRemote) {
	defer guard.Recover("whip_track", sess.log, sess.failed) // deferred first: the accounting below still runs
	select {
	case <-sess.placed:
	case <-sess.done:
		return
	}
	call := sess.call
	var unpublished uint64
	cut := newCutter(sess.codec, sess.s.cfg.ReorderWindow, sess.s.cfg.MaxFill, func(p []byte, f frame.Flags, at time.Time) {
		if call.SendAt(0, p, f, at) != nil {
			unpublished++
		}
	})
	defer sess.report(cut)
	defer func() { cut.Unpublished = unpublished }() // runs before report
	rr := newReceiverReports(uint32(t.SSRC()), t.Codec().ClockRate)
	buf := make([]byte, 1500)
	var pkt rtp.Packet
	timeout := int64(sess.s.cfg.MediaTimeout)
	last := time.Now().UnixNano()
	var set int64 // the read deadline in force (Unix ns)
	for {
		// The read must return by the deadline: the media timeout, or sooner when the cutter
		// waits. Setting it costs a timer, so it is moved only when it must come sooner or has
		// passed: a read that times out early is harmless (the loop looks again).
		deadline := last + timeout
		now := time.Now().UnixNano()
		if next := cut.poll(now); next != 0 && next < deadline {
			deadline = next
		}
		if deadline < set || set <= now {
			if err := t.SetReadDeadline(time.Unix(0, deadline)); err != nil {
				return
			}
			set = deadline
		}
		n, _, err := t.Read(buf)
		now = time.Now().UnixNano()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if now-last >= timeout {
					sess.end(reasonMediaTimeout)
					return
				}
				continue
			}
			return // closed
		}
		if hook := sess.s.packetHook.Load(); hook != nil {
			(*hook)(sess.callID, buf[:n])
		}
		if pkt.Unmarshal(buf[:n]) != nil {
			continue
		}
		last = now
		cut.push(pkt.SequenceNumber, pkt.Timestamp, pkt.Payload, now)
		rr.packet(pkt.SequenceNumber, pkt.Timestamp, now)
		if rr.due(now) {
			if err := sess.pc.WriteRTCP([]rtcp.Packet{rr.report(now)}); err != nil {
				sess.log.Debug().Err(err).Msg("receiver report")
			}
		}
	}
}

// report publishes the call's media accounting (event "media") and adds it to the metrics.
func (sess *session) report(cut *cutter) {
	st := cut.Stats
	sess.s.m.addStats(&st)
	if st.Lost > 0 || st.Skipped > 0 || st.Unsupported > 0 {
		sess.log.Info().Any("media", st).Msg("whip media losses")
	}
	n := sess.s.node.Load()
	if n == nil {
		return
	}
	_ = bus.PublishEvent(n.NC(), wire.Event{Kind: "media", Tenant: sess.tenant, Call: sess.callID, Epoch: sess.call.Epoch(), Source: "ingest/" + n.ID() + "/whip"},
		map[string]any{"codec": sess.codec.name, "stats": st})
}
