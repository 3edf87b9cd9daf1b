package loadtest

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/coder/websocket"
)

// ahFramesPerMessage is how many 20 ms frames one binary message carries: 200 ms, as Genesys's
// client sends them (1,600 bytes a channel of PCMU).
const ahFramesPerMessage = 10

// ahPingEvery is how many binary messages go between two pings: 5 s, the client's interval.
const ahPingEvery = 25

// ahCovered are the components the upgrade's signature covers, in the order Genesys signs them.
var ahCovered = []string{"@request-target", "@authority", "audiohook-organization-id", "audiohook-session-id", "audiohook-correlation-id", "x-api-key"}

// audiohookTarget plays each call as a Genesys AudioHook client (protocol v2, written from the
// protocol: a signed upgrade, open → opened, 200 ms PCMU binary messages with interleaved
// channels, ping every 5 s, close → closed). A call's legs are the channels external and
// internal, in that order.
type audiohookTarget struct {
	url    *url.URL
	key    string
	secret []byte // base64-decoded client secret; nil sends unsigned upgrades
	org    string // one organization for the run, as one Genesys org would be
	wait   time.Duration
	http   *http.Client
	ends   sync.WaitGroup
	once   sync.Once
	sent   atomic.Int64 // WebSocket messages
}

func newAudioHookTarget(endpoint, key, secret string, hangupDelay time.Duration) (*audiohookTarget, error) {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") {
		return nil, fmt.Errorf("loadtest: AudioHook URL %q: want ws:// or wss://", endpoint)
	}
	t := &audiohookTarget{url: u, key: key, org: uuid(), wait: hangupDelay, http: &http.Client{}}
	if secret != "" {
		if t.secret, err = base64.StdEncoding.DecodeString(secret); err != nil {
			return nil, fmt.Errorf("loadtest: AudioHook client secret: not base64: %w", err)
		}
	}
	return t, nil
}

func (t *audiohookTarget) close()          { t.once.Do(t.ends.Wait) }
func (t *audiohookTarget) messages() int64 { return t.sent.Load() }

// ahMedia is one media format of open and opened.
type ahMedia struct {
	Type     string   `json:"type"`
	Format   string   `json:"format"`
	Channels []string `json:"channels"`
	Rate     int      `json:"rate"`
}

// ahServerMsg is a message from the server.
type ahServerMsg struct {
	Version    string          `json:"version"`
	Type       string          `json:"type"`
	ID         string          `json:"id"`
	Seq        int64           `json:"seq"`
	ClientSeq  int64           `json:"clientseq"`
	Parameters json.RawMessage `json:"parameters"`
}

// offers returns what the client offers for a call of legs channels, as Genesys does: both
// channels, then each alone (stereo), or each alone (mono).
func ahOffers(legs int) []ahMedia {
	one := func(ch ...string) ahMedia { return ahMedia{Type: "audio", Format: "PCMU", Channels: ch, Rate: 8000} }
	if legs == 2 {
		return []ahMedia{one("external", "internal"), one("external"), one("internal")}
	}
	return []ahMedia{one("external"), one("internal")}
}

func (t *audiohookTarget) Start(ctx context.Context, spec session.Spec) (Call, error) {
	legs := len(spec.Legs)
	if spec.Legs[0].Codec != frame.CodecPCMU || legs > 2 {
		return nil, fmt.Errorf("loadtest: AudioHook mode sends one or two legs of μ-law, not %d of %s", legs, spec.Legs[0].Codec)
	}
	ctx, cancel := context.WithTimeout(ctx, wsSetupTimeout)
	defer cancel()
	id := uuid()
	conn, res, err := websocket.Dial(ctx, t.url.String(), &websocket.DialOptions{HTTPClient: t.http, HTTPHeader: t.header(id),
		CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		return nil, upgradeError("AudioHook", res, err)
	}
	conn.SetReadLimit(1 << 16)
	c := &ahCall{t: t, conn: conn, id: id, legs: legs, frame: make([][]byte, legs), closed: make(chan struct{}), readDone: make(chan struct{})}
	c.call = "ah-" + id
	if !subjects.Valid(c.call) {
		c.call = subjects.Encode(c.call)
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	offers := ahOffers(legs)
	err = c.text("open", map[string]any{"organizationId": t.org, "conversationId": uuid(),
		"participant": map[string]string{"id": uuid(), "ani": "+1-555-555-1234", "aniName": "loadtest", "dnis": "+1-800-555-6789"},
		"media":       offers})
	if err == nil {
		err = c.opened(ctx, offers[0])
	}
	if err != nil {
		c.cancel()
		_ = conn.CloseNow()
		return nil, err
	}
	go c.read()
	return c, nil
}

// header builds the upgrade's headers, signed (RFC 9421, hmac-sha256) when the key has a secret.
func (t *audiohookTarget) header(session string) http.Header {
	h := http.Header{}
	h.Set("Audiohook-Organization-Id", t.org)
	h.Set("Audiohook-Session-Id", session)
	h.Set("Audiohook-Correlation-Id", uuid())
	h.Set("X-API-KEY", t.key)
	h.Set("User-Agent", "callrouter-loadtest")
	if len(t.secret) == 0 {
		return h
	}
	nonce := make([]byte, 18)
	_, _ = rand.Read(nonce)
	created := time.Now().Unix()
	quoted := make([]string, len(ahCovered))
	for i, c := range ahCovered {
		quoted[i] = strconv.Quote(c)
	}
	params := fmt.Sprintf("(%s);keyid=%q;nonce=%q;alg=\"hmac-sha256\";created=%d;expires=%d", strings.Join(quoted, " "), t.key,
		base64.StdEncoding.EncodeToString(nonce), created, created+30)
	target := t.url.EscapedPath()
	if t.url.RawQuery != "" {
		target += "?" + t.url.RawQuery
	}
	var b strings.Builder
	for _, c := range ahCovered {
		v := h.Get(c)
		switch c {
		case "@request-target":
			v = target
		case "@authority":
			v = strings.ToLower(t.url.Host)
		}
		fmt.Fprintf(&b, "%q: %s\n", c, v)
	}
	b.WriteString(`"@signature-params": ` + params)
	mac := hmac.New(sha256.New, t.secret)
	mac.Write([]byte(b.String()))
	h.Set("Signature-Input", "sig1="+params)
	h.Set("Signature", "sig1=:"+base64.StdEncoding.EncodeToString(mac.Sum(nil))+":")
	return h
}

// ahCall is one AudioHook session.
type ahCall struct {
	t      *audiohookTarget
	conn   *websocket.Conn
	id     string // Audiohook-Session-Id, the id of every message
	call   string // the ingest's call: "ah-" and the session id
	legs   int
	ctx    context.Context // the session's; cancelled once it is over
	cancel context.CancelFunc

	mu        sync.Mutex // text messages go out in seq order
	seq       int64
	serverSeq atomic.Int64
	position  atomic.Int64 // samples per channel sent

	frame [][]byte // the current frame's payload of each leg (the pacer sends legs in order)
	buf   []byte   // the binary message being filled: samples interleaved in channel order
	inBuf int      // frames in buf
	msgs  int      // binary messages sent

	gone      atomic.Bool            // the server disconnected, or the WebSocket ended
	violation atomic.Pointer[string] // the server broke the protocol
	closed    chan struct{}          // "closed" received
	closeOnce sync.Once
	readDone  chan struct{}
}

func (c *ahCall) callID() string { return c.call }

// text sends one client message with the next seq, the last server seq seen and the position.
func (c *ahCall) text(typ string, params any) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	pos := strconv.FormatFloat(float64(c.position.Load())/8000, 'f', -1, 64)
	b, err := json.Marshal(map[string]any{"version": "2", "type": typ, "id": c.id, "seq": c.seq, "serverseq": c.serverSeq.Load(),
		"position": "PT" + pos + "S", "parameters": params})
	if err != nil {
		return err
	}
	c.t.sent.Add(1)
	return c.conn.Write(c.ctx, websocket.MessageText, b)
}

// ahRetryAfter finds the retryAfter of a refused placement in a disconnect's info.
var ahRetryAfter = regexp.MustCompile(`retryAfter PT([0-9.]+)S`)

// opened waits for the server's answer to open: opened with the format offered first, or a
// disconnect (a refusal when it says 503).
func (c *ahCall) opened(ctx context.Context, want ahMedia) error {
	for {
		m, err := c.next(ctx)
		if err != nil {
			return fmt.Errorf("loadtest: AudioHook: no opened: %w", err)
		}
		switch m.Type {
		case "opened":
			var p struct {
				Media []ahMedia `json:"media"`
			}
			if err := json.Unmarshal(m.Parameters, &p); err != nil || len(p.Media) != 1 || p.Media[0].Format != want.Format ||
				p.Media[0].Rate != want.Rate || strings.Join(p.Media[0].Channels, ",") != strings.Join(want.Channels, ",") {
				return fmt.Errorf("loadtest: AudioHook: opened selected %s, want %+v", m.Parameters, want)
			}
			return nil
		case "disconnect":
			var p struct {
				Reason string `json:"reason"`
				Info   string `json:"info"`
			}
			_ = json.Unmarshal(m.Parameters, &p)
			_ = c.text("close", map[string]string{"reason": "disconnect"})
			if sm := ahRetryAfter.FindStringSubmatch(p.Info); sm != nil || strings.Contains(p.Info, "503") {
				wait := time.Second
				if sm != nil {
					if s, err := strconv.ParseFloat(sm[1], 64); err == nil {
						wait = max(wait, time.Duration(s*float64(time.Second)))
					}
				}
				return &RefusedError{Code: "disconnect", Reason: p.Info, RetryAfter: wait}
			}
			return fmt.Errorf("loadtest: AudioHook: disconnect %s: %s", p.Reason, p.Info)
		}
	}
}

// next reads the next text message from the server and checks its envelope.
func (c *ahCall) next(ctx context.Context) (ahServerMsg, error) {
	for {
		typ, b, err := c.conn.Read(ctx)
		if err != nil {
			return ahServerMsg{}, err
		}
		if typ != websocket.MessageText {
			continue // the server sends no audio; a bidirectional one could
		}
		var m ahServerMsg
		if err := json.Unmarshal(b, &m); err != nil {
			return m, fmt.Errorf("malformed server message: %w", err)
		}
		if m.Version != "2" || m.ID != c.id || m.Seq != c.serverSeq.Load()+1 {
			return m, fmt.Errorf("server message %s: version %q, seq %d (want 2, %d), id the session's: %v", m.Type, m.Version, m.Seq,
				c.serverSeq.Load()+1, m.ID == c.id)
		}
		c.serverSeq.Store(m.Seq)
		return m, nil
	}
}

// read takes the server's messages until the WebSocket ends: a disconnect is answered with
// close (the call is then over for the pacer), closed ends the hang-up.
func (c *ahCall) read() {
	defer close(c.readDone)
	defer c.gone.Store(true)
	for {
		m, err := c.next(c.ctx)
		if err != nil {
			if m.Type != "" || strings.Contains(err.Error(), "malformed") {
				s := err.Error()
				c.violation.Store(&s)
			}
			return
		}
		switch m.Type {
		case "disconnect":
			c.gone.Store(true)
			_ = c.text("close", map[string]string{"reason": "disconnect"})
		case "closed":
			c.closeOnce.Do(func() { close(c.closed) })
		}
	}
}

// ended returns why frames can no longer be sent, or nil.
func (c *ahCall) ended() error {
	if v := c.violation.Load(); v != nil {
		return fmt.Errorf("loadtest: AudioHook: %s", *v)
	}
	if c.gone.Load() {
		return ErrEnded
	}
	return nil
}

// Send takes one leg's 20 ms frame; once every leg of ten frames is in, they go out as one
// binary message.
func (c *ahCall) Send(leg int, payload []byte) error {
	if leg < 0 || leg >= c.legs {
		return ErrLeg
	}
	if err := c.ended(); err != nil {
		return err
	}
	c.frame[leg] = payload
	if leg < c.legs-1 {
		return nil
	}
	if c.legs == 1 {
		c.buf = append(c.buf, payload...)
	} else {
		a, b := c.frame[0], c.frame[1]
		for i := range min(len(a), len(b)) {
			c.buf = append(c.buf, a[i], b[i])
		}
	}
	if c.inBuf++; c.inBuf < ahFramesPerMessage {
		return nil
	}
	return c.flush()
}

// flush sends the frames buffered, and a ping every 5 s of audio.
func (c *ahCall) flush() error {
	if len(c.buf) == 0 {
		return nil
	}
	err := c.conn.Write(c.ctx, websocket.MessageBinary, c.buf)
	c.t.sent.Add(1)
	c.position.Add(int64(len(c.buf) / c.legs))
	c.buf, c.inBuf = c.buf[:0], 0
	if c.msgs++; err == nil && c.msgs%ahPingEvery == 0 {
		err = c.text("ping", struct{}{})
	}
	if err != nil {
		if e := c.ended(); e != nil {
			return e
		}
		return fmt.Errorf("loadtest: AudioHook: %w", err)
	}
	return nil
}

// End sends what is buffered and hangs up off the pacer's goroutine: close (reason end) after
// the hang-up delay, closed awaited, then the WebSocket closed.
func (c *ahCall) End() {
	if c.ended() == nil {
		_ = c.flush()
	}
	c.t.ends.Add(1)
	go func() {
		defer c.t.ends.Done()
		defer c.cancel()
		time.Sleep(c.t.wait)
		if !c.gone.Load() && c.text("close", map[string]string{"reason": "end"}) == nil {
			t := time.NewTimer(wsCloseTimeout)
			select {
			case <-c.closed:
			case <-c.readDone:
			case <-t.C:
			}
			t.Stop()
		}
		closeWS(c.conn, c.readDone)
	}()
}
