package loadtest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"
)

// streamEnds are where the AudioHook and Twilio modes connect, and with what credentials: the
// in-process harness's, or the flags' for a remote ingest.
type streamEnds struct {
	audiohook, ahKey, ahSecret string
	twilio, twToken            string
}

// wsTarget is what a phase needs of the WebSocket stream clients (AudioHook, Twilio) besides
// Target: close waits for every hang-up; messages counts the WebSocket messages sent.
type wsTarget interface {
	Target
	close()
	messages() int64
}

// wsSetupTimeout bounds one call's setup: the upgrade and the server's answer (AudioHook's
// "opened", the ingest's "start" event of a Twilio stream).
const wsSetupTimeout = 15 * time.Second

// wsCloseTimeout bounds the wait for the server's end of a hang-up (AudioHook's "closed", the
// close of a Twilio stream after "stop").
const wsCloseTimeout = 5 * time.Second

// closeWS ends a stream's WebSocket with a normal closure and waits for its reader (readDone),
// closing the connection outright when the server has not closed its end within wsCloseTimeout.
func closeWS(conn *websocket.Conn, readDone <-chan struct{}) {
	_ = conn.Close(websocket.StatusNormalClosure, "")
	select {
	case <-readDone:
	case <-time.After(wsCloseTimeout):
		_ = conn.CloseNow()
		<-readDone
	}
}

// upgradeError turns a failed WebSocket upgrade into the tester's error: 503 and 429 (with
// their Retry-After) are refusals, anything else a failed setup.
func upgradeError(proto string, res *http.Response, err error) error {
	if res == nil {
		return fmt.Errorf("loadtest: %s upgrade: %w", proto, err)
	}
	var body string
	if res.Body != nil {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 512))
		body = strings.TrimSpace(string(b))
	}
	if res.StatusCode == http.StatusServiceUnavailable || res.StatusCode == http.StatusTooManyRequests {
		ra, _ := strconv.Atoi(res.Header.Get("Retry-After"))
		return &RefusedError{Code: strconv.Itoa(res.StatusCode), Reason: body, RetryAfter: time.Duration(max(ra, 1)) * time.Second}
	}
	return fmt.Errorf("loadtest: %s upgrade: %s: %s", proto, res.Status, body)
}

// uuid returns a random UUID version 4, as Genesys names its sessions.
func uuid() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
