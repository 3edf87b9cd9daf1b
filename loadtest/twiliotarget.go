package loadtest

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
)

// twTracks are the Media Streams tracks of a call's legs, in order.
var twTracks = []string{"inbound", "outbound"}

// twilioTarget plays each call as a Twilio Media Stream (written from Twilio's documentation of
// the protocol: connected, start with the tenant's token in customParameters, a media message of
// 20 ms base64 μ-law per track with chunk and timestamp, stop). Twilio's server sends nothing
// back, so a stream counts as set up when the ingest's "start" event for its call
// (events.<tenant>.tw-<streamSid>.start, published once the call is placed) arrives, and as
// refused or failed when the server closes the WebSocket first (1013: refused; 1008: a bad token).
type twilioTarget struct {
	url   string
	token string
	wait  time.Duration
	http  *http.Client
	sub   *nats.Subscription
	ends  sync.WaitGroup
	once  sync.Once
	sent  atomic.Int64 // WebSocket messages

	mu     sync.Mutex
	placed map[string]chan struct{} // call → closed on its start event
}

func newTwilioTarget(endpoint, token, tenant string, nc *nats.Conn, hangupDelay time.Duration) (*twilioTarget, error) {
	if !strings.HasPrefix(endpoint, "ws://") && !strings.HasPrefix(endpoint, "wss://") {
		return nil, fmt.Errorf("loadtest: Twilio URL %q: want ws:// or wss://", endpoint)
	}
	t := &twilioTarget{url: endpoint, token: token, wait: hangupDelay, http: &http.Client{}, placed: map[string]chan struct{}{}}
	sub, err := nc.Subscribe(subjects.Event(tenant, "*", "start"), t.onPlaced)
	if err != nil {
		return nil, err
	}
	t.sub = sub
	if err := nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return nil, err
	}
	return t, nil
}

func (t *twilioTarget) close() {
	t.once.Do(func() {
		t.ends.Wait()
		_ = t.sub.Unsubscribe()
	})
}

func (t *twilioTarget) messages() int64 { return t.sent.Load() }

// onPlaced takes the ingest's start events.
func (t *twilioTarget) onPlaced(m *nats.Msg) {
	e, err := subjects.ParseEvent(m.Subject)
	if err != nil {
		return
	}
	t.mu.Lock()
	ch := t.placed[e.Call]
	delete(t.placed, e.Call)
	t.mu.Unlock()
	if ch != nil {
		close(ch)
	}
}

func (t *twilioTarget) Start(ctx context.Context, spec session.Spec) (Call, error) {
	legs := len(spec.Legs)
	if spec.Legs[0].Codec != frame.CodecPCMU || legs > 2 {
		return nil, fmt.Errorf("loadtest: Twilio mode sends one or two tracks of μ-law, not %d legs of %s", legs, spec.Legs[0].Codec)
	}
	ctx, cancel := context.WithTimeout(ctx, wsSetupTimeout)
	defer cancel()
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	sid := "MZ" + hex.EncodeToString(b)
	c := &twCall{t: t, sid: sid, call: subjects.Encode("tw-" + sid), legs: legs, chunk: make([]int64, legs), readDone: make(chan struct{})}
	placed := make(chan struct{})
	t.mu.Lock()
	t.placed[c.call] = placed
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		delete(t.placed, c.call)
		t.mu.Unlock()
	}()
	conn, res, err := websocket.Dial(ctx, t.url, &websocket.DialOptions{HTTPClient: t.http, CompressionMode: websocket.CompressionDisabled,
		HTTPHeader: http.Header{"User-Agent": {"callrouter-loadtest"}}})
	if err != nil {
		return nil, upgradeError("Twilio", res, err)
	}
	c.conn = conn
	c.ctx, c.cancel = context.WithCancel(context.Background())
	go c.read()
	err = c.write(map[string]any{"event": "connected", "protocol": "Call", "version": "1.0.0"})
	if err == nil {
		c.seq++
		err = c.write(map[string]any{"event": "start", "sequenceNumber": strconv.FormatInt(c.seq, 10), "streamSid": sid,
			"start": map[string]any{"streamSid": sid, "accountSid": "AC" + hex.EncodeToString(b), "callSid": "CA" + hex.EncodeToString(b),
				"tracks": twTracks[:legs], "customParameters": map[string]string{"token": t.token},
				"mediaFormat": map[string]any{"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
	}
	if err == nil {
		select {
		case <-placed:
			return c, nil
		case <-c.readDone:
			err = c.closedError()
		case <-ctx.Done():
			err = fmt.Errorf("loadtest: Twilio: not placed: %w", ctx.Err())
		}
	}
	c.cancel()
	_ = conn.CloseNow()
	<-c.readDone
	return nil, err
}

// twCall is one Media Stream.
type twCall struct {
	t        *twilioTarget
	conn     *websocket.Conn
	sid      string
	call     string // the ingest's call: "tw-" and the stream sid
	legs     int
	ctx      context.Context // the stream's; cancelled once it is over
	cancel   context.CancelFunc
	seq      int64   // sequenceNumber of the last message
	chunk    []int64 // per track: chunks sent
	buf      []byte
	gone     atomic.Bool
	readDone chan struct{}
	status   websocket.StatusCode // the server's close code, once readDone is closed
	reason   string
}

func (c *twCall) callID() string { return c.call }

func (c *twCall) write(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	c.t.sent.Add(1)
	return c.conn.Write(c.ctx, websocket.MessageText, b)
}

// read waits for the server to close the stream (it sends nothing else) and keeps its code.
func (c *twCall) read() {
	defer close(c.readDone)
	for {
		if _, _, err := c.conn.Read(c.ctx); err != nil {
			c.status = websocket.CloseStatus(err)
			var ce websocket.CloseError
			if errors.As(err, &ce) {
				c.reason = ce.Reason
			}
			c.gone.Store(true)
			return
		}
	}
}

// closedError explains a stream the server closed before its call was placed: 1013 (try again
// later) is a refusal, anything else (1008 for a bad token) a failed setup.
func (c *twCall) closedError() error {
	if c.status == websocket.StatusTryAgainLater {
		wait := time.Second
		if _, after, ok := strings.Cut(c.reason, "retry after "); ok {
			if d, err := time.ParseDuration(strings.TrimSpace(after)); err == nil {
				wait = max(wait, d)
			}
		}
		return &RefusedError{Code: "1013", Reason: c.reason, RetryAfter: wait}
	}
	return fmt.Errorf("loadtest: Twilio: closed by the server before placement: %d %s", c.status, c.reason)
}

// Send sends one leg's 20 ms frame as a media message of its track.
func (c *twCall) Send(leg int, payload []byte) error {
	if leg < 0 || leg >= c.legs {
		return ErrLeg
	}
	if c.gone.Load() {
		return ErrEnded
	}
	c.seq++
	ts := c.chunk[leg] * int64(frame.Duration/time.Millisecond)
	c.chunk[leg]++
	b := append(c.buf[:0], `{"event":"media","sequenceNumber":"`...)
	b = strconv.AppendInt(b, c.seq, 10)
	b = append(b, `","streamSid":"`...)
	b = append(b, c.sid...)
	b = append(b, `","media":{"track":"`...)
	b = append(b, twTracks[leg]...)
	b = append(b, `","chunk":"`...)
	b = strconv.AppendInt(b, c.chunk[leg], 10)
	b = append(b, `","timestamp":"`...)
	b = strconv.AppendInt(b, ts, 10)
	b = append(b, `","payload":"`...)
	b = base64.StdEncoding.AppendEncode(b, payload)
	b = append(b, `"}}`...)
	c.buf = b
	c.t.sent.Add(1)
	if err := c.conn.Write(c.ctx, websocket.MessageText, b); err != nil {
		if c.gone.Load() {
			return ErrEnded
		}
		return fmt.Errorf("loadtest: Twilio: %w", err)
	}
	return nil
}

// End hangs up off the pacer's goroutine: stop after the hang-up delay, then the server's close
// awaited (it closes with 1000 after stop).
func (c *twCall) End() {
	c.t.ends.Add(1)
	go func() {
		defer c.t.ends.Done()
		defer c.cancel()
		time.Sleep(c.t.wait)
		if !c.gone.Load() {
			c.seq++
			if c.write(map[string]any{"event": "stop", "sequenceNumber": strconv.FormatInt(c.seq, 10), "streamSid": c.sid,
				"stop": map[string]string{"accountSid": "AC" + c.sid[2:], "callSid": "CA" + c.sid[2:]}}) == nil {
				t := time.NewTimer(wsCloseTimeout)
				select {
				case <-c.readDone:
				case <-t.C:
				}
				t.Stop()
			}
		}
		closeWS(c.conn, c.readDone)
	}()
}
