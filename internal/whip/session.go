package whip

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"sync"
	"time"

	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/pion/dtls/v3"
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

// session is one WHIP session: its ICE path, DTLS and SRTP on the shared socket, and the call
// it feeds.
type session struct {
	s      *Server
	id     string // the unguessable token in the session URL
	tenant string
	callID string
	codec  *codec
	log    zerolog.Logger

	t      transport  // ICE and DTLS (rx.go)
	m      mediaRx    // the receive state (rx.go)
	dtls   *dtls.Conn // set by runDTLS (mu)
	call   *ingest.Call
	sub    *nats.Subscription
	events *eventLog

	placed   chan struct{} // closed once call is set (or the session ended before)
	done     chan struct{} // closed when the session has ended
	endOnce  sync.Once
	slotOnce sync.Once

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

// failed is the onPanic of the session's code on the read loop and its goroutines (defer
// guard.Recover(where, sess.log, sess.failed)): a panic there ends this session with reason
// error, never the process. The read loop drops the session's packets from then on.
func (sess *session) failed(any) {
	sess.t.stopped.Store(true)
	sess.goEnd(reasonError)
}

// goEnd ends the session on a goroutine of its own (the read loop must not block on Close).
func (sess *session) goEnd(reason string) {
	sess.s.spawn(func() { sess.end(reason) })
}

// watch ends the session when ingest ends the call, when it does not connect in time, when the
// peer's consent lapses (ICEFailed), when RTP stops (MediaTimeout), or when the server stops.
// Every tick it sends the peer a consent check.
func (sess *session) watch() {
	cfg := sess.s.cfg
	connect := time.NewTimer(cfg.ConnectTimeout)
	defer connect.Stop()
	tick := time.NewTicker(min(cfg.ICEKeepalive, cfg.ICEFailed/4, cfg.MediaTimeout/4))
	defer tick.Stop()
	for {
		select {
		case <-sess.call.Done():
			sess.end(reasonIngestEnded)
			return
		case <-connect.C:
			if sess.currentState() != stateConnected {
				sess.end(reasonConnectTimeout)
				return
			}
		case now := <-tick.C:
			if sess.t.sel.Load() != nil && now.UnixNano()-sess.t.lastRecv.Load() >= int64(cfg.ICEFailed) {
				sess.end(reasonICEFailed)
				return
			}
			if last := sess.m.lastRTP.Load(); last != 0 && now.UnixNano()-last >= int64(cfg.MediaTimeout) {
				sess.end(reasonMediaTimeout)
				return
			}
			sess.consent()
		case <-sess.s.stop:
			sess.end(reasonShutdown)
			return
		case <-sess.done:
			return
		}
	}
}

// end ends the call, its DTLS and its media; the session URL lingers for Config.Linger.
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
		sess.closeTransport()
		if cut := sess.closeMedia(); cut != nil {
			sess.report(cut)
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
		sess.closeTransport()
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
	_ = sess.call.PublishEvent(wire.Event{Kind: "media", Epoch: sess.call.Epoch(), Source: "ingest/" + n.ID() + "/whip"},
		map[string]any{"codec": sess.codec.name, "stats": st})
}
