package proc

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"

	"github.com/coder/websocket"
)

// twilioTracks are the Media Streams track names of the fork's channels.
var twilioTracks = map[string]string{"external": "inbound", "internal": "outbound"}

// parseTwilioTarget reads a targets line "<tenant> twilio <ws-url> [token]".
func parseTwilioTarget(fs []string, line int) (ForkTarget, error) {
	if len(fs) != 3 && len(fs) != 4 {
		return ForkTarget{}, fmt.Errorf("fork: targets line %d: want \"<tenant> twilio <ws-url> [token]\"", line)
	}
	u, err := url.Parse(fs[2])
	if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" || u.RawQuery != "" {
		return ForkTarget{}, fmt.Errorf("fork: targets line %d: %q is not a ws:// or wss:// URL without a query (Media Streams URLs carry none: the token goes in a custom parameter)", line, fs[2])
	}
	t := ForkTarget{URL: fs[2], Twilio: true}
	if len(fs) == 4 {
		t.Token = fs[3]
	}
	return t, nil
}

// twilioSid is a Twilio-style id (two letters, 32 hex digits) derived from the call, so that every
// worker that holds the call names it alike.
func twilioSid(prefix, tenant, call string) string {
	sum := sha256.Sum256([]byte("callrouter fork twilio\x00" + prefix + "\x00" + tenant + "\x00" + call))
	return prefix + hex.EncodeToString(sum[:16])
}

// twilioMedia is a Media Streams media message.
type twilioMedia struct {
	Event          string `json:"event"`
	SequenceNumber string `json:"sequenceNumber"`
	StreamSid      string `json:"streamSid"`
	Media          struct {
		Track     string `json:"track"`
		Chunk     string `json:"chunk"`
		Timestamp string `json:"timestamp"`
		Payload   string `json:"payload"`
	} `json:"media"`
}

// runTwilio streams the call in the Twilio Media Streams shape: connected, start (the legs as
// tracks inbound and outbound, the token and the call in customParameters), one media message a
// frame and track, stop. Positions are on the call's timeline as for AudioHook: a frame's chunk is
// its sequence + 1 and its timestamp sequence × 20 ms, so a stream that a worker opens for a call
// it took over starts where that worker starts and names the same callSid. Nothing the receiver
// sends is acted on (a bidirectional receiver's media, marks and clears are read and dropped).
func (h *forkCall) runTwilio() {
	defer close(h.done)
	first := h.firstFrames()
	if len(first) == 0 {
		return
	}
	spec := h.c.Spec()
	start := int64(first[0].seq)
	for _, f := range first {
		start = min(start, int64(f.seq))
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	sid := "MZ" + hex.EncodeToString(b)
	callSid := twilioSid("CA", spec.Tenant, spec.Call)
	ctx, cancel := h.ctx(forkOpenTimeout)
	conn, _, err := websocket.Dial(ctx, h.t.URL, nil)
	cancel()
	if err != nil {
		h.c.Log().Warn().Err(err).Str("url", h.t.URL).Msg("fork: not connected")
		h.twilioFailed(err, start)
		return
	}
	defer conn.CloseNow()
	conn.SetReadLimit(forkReadLimit)
	go func() { // drain what a bidirectional receiver sends, until the connection ends
		for {
			if _, _, err := conn.Read(context.Background()); err != nil {
				return
			}
		}
	}()
	seq := 0
	write := func(v any) error {
		b, _ := json.Marshal(v)
		ctx, cancel := h.ctx(forkWriteTimeout)
		defer cancel()
		return conn.Write(ctx, websocket.MessageText, b)
	}
	next := func() string { seq++; return strconv.Itoa(seq) }
	var tracks []string
	for _, ch := range h.chans {
		tracks = append(tracks, twilioTracks[ch])
	}
	params := map[string]string{"tenant": spec.Tenant, "call": spec.Call, "start_ms": strconv.FormatInt(start*20, 10)}
	if h.t.Token != "" {
		params["token"] = h.t.Token
	}
	account := twilioSid("AC", spec.Tenant, "")
	startMsg := map[string]any{"event": "start", "sequenceNumber": "", "streamSid": sid, "start": map[string]any{
		"streamSid": sid, "accountSid": account, "callSid": callSid, "tracks": tracks, "customParameters": params,
		"mediaFormat": map[string]any{"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}
	if err := write(map[string]string{"event": "connected", "protocol": "Call", "version": "1.0.0"}); err != nil {
		h.twilioFailed(err, start)
		return
	}
	startMsg["sequenceNumber"] = next()
	if err := write(startMsg); err != nil {
		h.twilioFailed(err, start)
		return
	}
	h.c.Emit("fork", map[string]any{"state": "open", "session": sid, "position": forkPosition(start), "call_sid": callSid})
	last := make([]int64, len(h.chans))
	for i := range last {
		last[i] = start - 1
	}
	var late int64
	var m twilioMedia
	m.Event, m.StreamSid = "media", sid
	send := func(f forkFrame) error {
		if f.payload == nil {
			return nil // a gap: Media Streams has no word for it; the timestamps jump
		}
		if int64(f.seq) <= last[f.ch] {
			late++
			return nil
		}
		last[f.ch] = int64(f.seq)
		m.SequenceNumber = next()
		m.Media.Track = tracks[f.ch]
		m.Media.Chunk = strconv.FormatUint(uint64(f.seq)+1, 10)
		m.Media.Timestamp = strconv.FormatUint(uint64(f.seq)*20, 10)
		m.Media.Payload = base64.StdEncoding.EncodeToString(f.payload)
		return write(&m)
	}
	reason := "end"
	for _, f := range first {
		if send(f) != nil {
			reason = "write_failed"
		}
	}
loop:
	for reason == "end" {
		select {
		case f := <-h.in:
			if send(f) != nil {
				reason = "write_failed"
			}
		case <-h.stop:
			for reason == "end" {
				select {
				case f := <-h.in:
					if send(f) != nil {
						reason = "write_failed"
					}
					continue
				default:
				}
				break
			}
			break loop
		}
	}
	if reason == "end" {
		_ = write(map[string]any{"event": "stop", "sequenceNumber": next(), "streamSid": sid,
			"stop": map[string]string{"accountSid": account, "callSid": callSid}})
		_ = conn.Close(websocket.StatusNormalClosure, "")
	}
	h.c.Emit("fork", map[string]any{"state": "closed", "session": sid, "reason": reason, "late": late, "dropped": h.dropped.Load()})
}

// twilioFailed reports a stream that could not start and drains the queue until the call stops,
// so Frame never blocks.
func (h *forkCall) twilioFailed(err error, start int64) {
	h.c.Emit("fork", map[string]any{"state": "failed", "why": err.Error(), "position": forkPosition(start)})
	for {
		select {
		case <-h.in:
		case <-h.stop:
			return
		}
	}
}
