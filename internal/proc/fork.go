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
	"net/http"
	"net/url"
	"os"
	"strings"
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
}

// Fork timing and bounds.
const (
	forkQueue        = 500 // frames (per call) waiting for the connection: 5 s of one leg
	forkBatch        = 10  // 20 ms frames per binary message (200 ms, as Genesys sends)
	forkOpenTimeout  = 5 * time.Second
	forkCloseTimeout = 5 * time.Second
	forkWriteTimeout = 5 * time.Second
	forkMaxLag       = 50 // frames one leg may run ahead of the other before the other is filled
	defaultForkOrg   = "00000000-0000-4000-8000-000000000000"
)

// forkProc is the "fork" processor: it streams the frames of each call of a tenant with a target
// to that target as an AudioHook client (fork.targets=<file>: "<tenant> <ws-url> <api-key>
// <base64-secret or -> [organization-id]" a line). Legs caller and agent are sent as channels
// external and internal (PCMU or L16 at 8 kHz; calls in other codecs are not forked), one binary
// message per 200 ms. The connection runs on a goroutine of its own behind a bounded queue: a slow
// or dead target never holds up the call; what does not fit is dropped and counted.
type forkProc struct {
	targets map[string]ForkTarget
	dropped atomic.Uint64
}

func newFork(o Options) (Processor, error) {
	if err := o.Only("targets"); err != nil {
		return nil, err
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
	t, err := ParseForkTargets(f)
	if err != nil {
		return nil, err
	}
	return &forkProc{targets: t}, nil
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
	if len(chans) == 0 {
		c.Emit("fork", map[string]string{"state": "skipped", "why": "no caller/agent leg in PCMU or L16 at 8 kHz"})
		return forkNoop{}, nil
	}
	h := &forkCall{p: p, c: c, t: t, chans: chans, format: format, legIdx: legIdx,
		in: make(chan forkFrame, forkQueue), stop: make(chan struct{}), done: make(chan struct{})}
	go h.run()
	return h, nil
}

type forkFrame struct {
	ch      int
	seq     uint32
	payload []byte
}

// forkCall is one call's fork: Frame and Stop (on the call's goroutine) hand frames to run.
type forkCall struct {
	p      *forkProc
	c      Call
	t      ForkTarget
	chans  []string
	format string
	legIdx map[uint8]int
	in     chan forkFrame
	stop   chan struct{}
	done   chan struct{}
}

func (h *forkCall) Frame(f *Frame) {
	ch, ok := h.legIdx[f.Header.Leg]
	if !ok || f.Header.Has(frame.FlagLast) || len(f.Payload) == 0 {
		return
	}
	select {
	case h.in <- forkFrame{ch: ch, seq: f.Header.Seq, payload: append([]byte(nil), f.Payload...)}:
	default:
		h.p.dropped.Add(1)
	}
}

// Stop ends the session after the queued audio; it does not wait for the target.
func (h *forkCall) Stop(string) { close(h.stop) }

// run is the AudioHook client: connect, open, stream, close.
func (h *forkCall) run() {
	defer close(h.done)
	log := h.c.Log()
	s, err := h.connect()
	if err != nil {
		log.Warn().Err(err).Str("url", h.t.URL).Msg("fork: not connected")
		h.c.Emit("fork", map[string]string{"state": "failed", "why": err.Error()})
		for { // drain until the call stops, so Frame never blocks
			select {
			case <-h.in:
			case <-h.stop:
				return
			}
		}
	}
	defer s.conn.CloseNow()
	h.c.Emit("fork", map[string]string{"state": "open", "session": s.id})
	reason := h.stream(s)
	h.c.Emit("fork", map[string]string{"state": "closed", "session": s.id, "reason": reason})
}

// forkSession is the client side of one AudioHook session.
type forkSession struct {
	conn     *websocket.Conn
	id       string
	seq      int64
	server   atomic.Int64  // last server seq seen
	closed   chan struct{} // closed answered
	disc     chan struct{} // disconnect received
	samples  int64         // per channel sent
	bps      int
	pending  [][]byte // per channel, 20 ms frames not yet sent
	lastSeq  []int64
	batchBuf []byte
}

func forkUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// connect upgrades (signed as an AudioHook client does) and runs open → opened.
func (h *forkCall) connect() (*forkSession, error) {
	u, _ := url.Parse(h.t.URL)
	s := &forkSession{id: forkUUID(), closed: make(chan struct{}), disc: make(chan struct{}), bps: 1,
		pending: make([][]byte, len(h.chans)), lastSeq: make([]int64, len(h.chans))}
	if h.format == "L16" {
		s.bps = 2
	}
	for i := range s.lastSeq {
		s.lastSeq[i] = -1
	}
	hdr := http.Header{}
	hdr.Set("Audiohook-Organization-Id", h.t.OrgID)
	hdr.Set("Audiohook-Session-Id", s.id)
	hdr.Set("Audiohook-Correlation-Id", forkUUID())
	hdr.Set("X-API-KEY", h.t.APIKey)
	if len(h.t.Secret) > 0 {
		signAudioHook(hdr, u, h.t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), forkOpenTimeout)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, h.t.URL, &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		return nil, err
	}
	s.conn = conn
	spec := h.c.Spec()
	media := map[string]any{"type": "audio", "format": h.format, "channels": h.chans, "rate": 8000}
	open := map[string]any{"organizationId": h.t.OrgID, "conversationId": forkUUID(),
		"participant": map[string]any{"id": forkUUID(), "ani": spec.Meta["ani"], "aniName": "", "dnis": spec.Meta["dnis"]},
		"media":       []any{media}, "customConfig": map[string]string{"tenant": spec.Tenant, "call": spec.Call}}
	if err := s.send(ctx, "open", open); err != nil {
		conn.CloseNow()
		return nil, err
	}
	_, b, err := conn.Read(ctx)
	var m struct {
		Type       string `json:"type"`
		Seq        int64  `json:"seq"`
		Parameters struct {
			Media []json.RawMessage `json:"media"`
		} `json:"parameters"`
	}
	if err == nil {
		err = json.Unmarshal(b, &m)
	}
	if err != nil || m.Type != "opened" || len(m.Parameters.Media) != 1 {
		conn.CloseNow()
		if err == nil {
			err = fmt.Errorf("fork: got %s, not opened with our media", m.Type)
		}
		return nil, err
	}
	s.server.Store(m.Seq)
	go s.readLoop()
	return s, nil
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
	pos := time.Duration(s.samples) * time.Second / 8000
	b, _ := json.Marshal(map[string]any{"version": "2", "type": typ, "id": s.id, "seq": s.seq, "serverseq": s.server.Load(),
		"position": fmt.Sprintf("PT%gS", pos.Seconds()), "parameters": params})
	return s.conn.Write(ctx, websocket.MessageText, b)
}

// readLoop follows the server: its seq, closed and disconnect.
func (s *forkSession) readLoop() {
	for {
		_, b, err := s.conn.Read(context.Background())
		if err != nil {
			return
		}
		var m struct {
			Type string `json:"type"`
			Seq  int64  `json:"seq"`
		}
		if json.Unmarshal(b, &m) != nil {
			continue
		}
		s.server.Store(m.Seq)
		switch m.Type {
		case "closed":
			close(s.closed)
			return
		case "disconnect":
			close(s.disc)
		}
	}
}

// stream sends the call's audio until it stops or the server disconnects, then closes.
func (h *forkCall) stream(s *forkSession) string {
	reason := "end"
	flush := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), forkWriteTimeout)
		defer cancel()
		return s.flush(ctx, false)
	}
loop:
	for {
		select {
		case f := <-h.in:
			s.add(f, h.format)
			if s.ready() >= forkBatch {
				if err := flush(); err != nil {
					return "write_failed"
				}
			}
		case <-s.disc:
			reason = "disconnect"
			break loop
		case <-h.stop:
			for { // what is queued, then close
				select {
				case f := <-h.in:
					s.add(f, h.format)
					continue
				default:
				}
				break
			}
			break loop
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), forkCloseTimeout)
	defer cancel()
	if reason == "end" {
		_ = s.flush(ctx, true)
	}
	if s.send(ctx, "close", map[string]string{"reason": reason}) == nil {
		select {
		case <-s.closed:
		case <-ctx.Done():
			reason = "close_timeout"
		}
	}
	_ = s.conn.Close(websocket.StatusNormalClosure, "")
	return reason
}

// add puts a frame at its channel's place: a sequence gap is filled with silence (at most
// forkMaxLag frames), a late frame is dropped.
func (s *forkSession) add(f forkFrame, format string) {
	silence := byte(0xff)
	if format == "L16" {
		silence = 0
	}
	last := s.lastSeq[f.ch]
	if last >= 0 {
		d := int64(f.seq) - last
		if d <= 0 {
			return
		}
		for k := int64(1); k < min(d, forkMaxLag); k++ {
			for range f.payload {
				s.pending[f.ch] = append(s.pending[f.ch], silence)
			}
		}
	}
	s.lastSeq[f.ch] = int64(f.seq)
	s.pending[f.ch] = append(s.pending[f.ch], f.payload...)
	// A channel far ahead of another: the other is filled so the message stays in step.
	frameBytes := 160 * s.bps
	for ch := range s.pending {
		for len(s.pending[f.ch])-len(s.pending[ch]) > forkMaxLag*frameBytes {
			s.pending[ch] = append(s.pending[ch], make([]byte, frameBytes)...)
			if silence != 0 {
				for i := len(s.pending[ch]) - frameBytes; i < len(s.pending[ch]); i++ {
					s.pending[ch][i] = silence
				}
			}
		}
	}
}

// ready returns the 20 ms frames every channel has.
func (s *forkSession) ready() int {
	n := len(s.pending[0])
	for _, p := range s.pending[1:] {
		n = min(n, len(p))
	}
	return n / (160 * s.bps)
}

// flush sends what every channel has, interleaved (all of it, padding short channels, when last).
func (s *forkSession) flush(ctx context.Context, last bool) error {
	n := len(s.pending[0])
	for _, p := range s.pending {
		if last {
			n = max(n, len(p))
		} else {
			n = min(n, len(p))
		}
	}
	n -= n % s.bps
	if n == 0 {
		return nil
	}
	pad := byte(0xff) // μ-law silence; L16's is zero
	if s.bps == 2 {
		pad = 0
	}
	out := s.batchBuf[:0]
	for i := 0; i < n; i += s.bps {
		for ch := range s.pending {
			if i+s.bps <= len(s.pending[ch]) {
				out = append(out, s.pending[ch][i:i+s.bps]...)
			} else {
				for k := 0; k < s.bps; k++ {
					out = append(out, pad)
				}
			}
		}
	}
	s.batchBuf = out
	for ch := range s.pending {
		k := min(n, len(s.pending[ch]))
		s.pending[ch] = append(s.pending[ch][:0], s.pending[ch][k:]...)
	}
	s.samples += int64(n / s.bps)
	return s.conn.Write(ctx, websocket.MessageBinary, out)
}
