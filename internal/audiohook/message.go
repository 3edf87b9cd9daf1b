package audiohook

import (
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
	"time"
)

// clientMsg is a message from the client (Genesys): open, close, discarded, error, paused, ping,
// resumed, update.
type clientMsg struct {
	Version    string          `json:"version"`
	ID         string          `json:"id"`
	Type       string          `json:"type"`
	Seq        int64           `json:"seq"`
	ServerSeq  int64           `json:"serverseq"`
	Position   string          `json:"position"`
	Parameters json.RawMessage `json:"parameters"`
}

// serverMsg is a message to the client: opened, closed, disconnect, event, pong.
type serverMsg struct {
	Version    string `json:"version"`
	ID         string `json:"id"`
	Type       string `json:"type"`
	Seq        int64  `json:"seq"`
	ClientSeq  int64  `json:"clientseq"`
	Parameters any    `json:"parameters"`
}

// media is one media format of open.parameters.media and opened.parameters.media.
type media struct {
	Type     string   `json:"type"`
	Format   string   `json:"format"`
	Channels []string `json:"channels"`
	Rate     int      `json:"rate"`
}

type participant struct {
	ID      string `json:"id"`
	ANI     string `json:"ani"`
	ANIName string `json:"aniName"`
	DNIS    string `json:"dnis"`
}

type openParams struct {
	OrganizationID string          `json:"organizationId"`
	ConversationID string          `json:"conversationId"`
	Participant    participant     `json:"participant"`
	Media          []media         `json:"media"`
	Language       string          `json:"language,omitempty"`
	CustomConfig   json.RawMessage `json:"customConfig,omitempty"`
	// ContinuedSessions names the sessions this one continues: the client reconnected (on
	// its own, or asked by a server's "reconnect") and will close them with reason reconnect.
	ContinuedSessions []continuedSession `json:"continuedSessions,omitempty"`
}

// continuedSession is one entry of open.parameters.continuedSessions.
type continuedSession struct {
	ID        string `json:"id"`
	ServerSeq int64  `json:"serverseq"`
	ClientSeq int64  `json:"clientseq"`
}

// customConfig is what this server reads from open.parameters.customConfig: the kinds of call
// events (events.<tenant>.<call>.<kind>) the client wants as AudioHook "event" messages.
type customConfig struct {
	Events []string `json:"events"`
}

type openedParams struct {
	Media       []media `json:"media"`
	StartPaused bool    `json:"startPaused"`
}

type closeParams struct {
	Reason string `json:"reason"`
}

type discardedParams struct {
	Start     string `json:"start"`
	Discarded string `json:"discarded"`
}

type errorParams struct {
	Code       int    `json:"code"`
	Message    string `json:"message"`
	RetryAfter string `json:"retryAfter,omitempty"`
}

type updateParams struct {
	Language string `json:"language"`
}

type disconnectParams struct {
	Reason string `json:"reason"`
	Info   string `json:"info,omitempty"`
}

type eventEntity struct {
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

type eventParams struct {
	Entities []eventEntity `json:"entities"`
}

// empty is {} for messages without parameters.
type empty struct{}

// maxDuration bounds a parsed position or duration (a day).
const maxDuration = 24 * time.Hour

var errDuration = errors.New("audiohook: bad ISO-8601 duration")

// parseDuration reads the ISO-8601 durations the protocol uses: PT[nH][nM][n[.n]S].
func parseDuration(s string) (time.Duration, error) {
	rest, ok := strings.CutPrefix(s, "PT")
	if !ok || rest == "" || len(s) > 40 {
		return 0, errDuration
	}
	var total float64
	for _, unit := range []struct {
		c byte
		d float64
	}{{'H', 3600}, {'M', 60}, {'S', 1}} {
		i := strings.IndexByte(rest, unit.c)
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(rest[:i], 64)
		if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) || strings.ContainsAny(rest[:i], "eE+-") {
			return 0, errDuration
		}
		total += v * unit.d
		rest = rest[i+1:]
	}
	if rest != "" || total*float64(time.Second) > float64(maxDuration) {
		return 0, errDuration
	}
	return time.Duration(math.Round(total * float64(time.Second))), nil
}

// formatDuration writes d as PT<seconds>S.
func formatDuration(d time.Duration) string {
	return "PT" + strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "S"
}
