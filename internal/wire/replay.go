package wire

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
)

// ReplayNextHeader is set on a replay reply that stops short because the rest would not fit in one
// NATS message (the server's max_payload). Its value, "<leg> <seq>", is where the rest begins: the
// requester sends the request again with Continue(value) and appends the answer. A reply without
// it is complete, so a reply that fits keeps the plain format of a single message.
const ReplayNextHeader = "Replay-Next"

// MaxControlBytes bounds a JSON control request (place, replay, migrate, API query): a larger one
// is refused with CodeBadRequest before it is decoded. Heartbeats are bounded by max_payload only.
const MaxControlBytes = 64 << 10

// ErrReplayRefused is returned by RequestReplay when ingest answers with an error Reply.
var ErrReplayRefused = errors.New("wire: replay refused")

// Continue returns the request for the rest of a replay whose reply carried ReplayNextHeader =
// next: the legs from the named one on, that leg starting at the named sequence.
func (r ReplayRequest) Continue(next string) (ReplayRequest, error) {
	legS, seqS, ok := strings.Cut(next, " ")
	leg, err1 := strconv.ParseUint(legS, 10, 8)
	seq, err2 := strconv.ParseUint(seqS, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return r, fmt.Errorf("wire: bad %s %q", ReplayNextHeader, next)
	}
	for i, lr := range r.Legs {
		if lr.Leg != uint8(leg) {
			continue
		}
		if lr.To > 0 && int64(seq) >= lr.To {
			return r, fmt.Errorf("wire: %s %q is past the range asked for", ReplayNextHeader, next)
		}
		out := r
		out.Legs = append([]LegRange{{Leg: lr.Leg, From: int64(seq), To: lr.To}}, r.Legs[i+1:]...)
		return out, nil
	}
	return r, fmt.Errorf("wire: %s %q names a leg not asked for", ReplayNextHeader, next)
}

// ReplayNext formats a ReplayNextHeader value.
func ReplayNext(leg uint8, seq uint32) string {
	return strconv.FormatUint(uint64(leg), 10) + " " + strconv.FormatUint(uint64(seq), 10)
}

// RequestReplay sends req on subject and returns the replayed frames, following ReplayNextHeader
// continuations (at most maxParts messages) until the reply is complete. An error Reply from
// ingest is returned as an error wrapping ErrReplayRefused, with the Reply.
func RequestReplay(ctx context.Context, nc *nats.Conn, subject string, req ReplayRequest) ([]byte, *Reply, error) {
	const maxParts = 64
	var out []byte
	for part := 0; part < maxParts; part++ {
		data, err := json.Marshal(req)
		if err != nil {
			return nil, nil, err
		}
		msg, err := nc.RequestWithContext(ctx, subject, data)
		if err != nil {
			return out, nil, err
		}
		if len(msg.Data) > 0 && msg.Data[0] == '{' {
			var rep Reply
			if err := json.Unmarshal(msg.Data, &rep); err != nil {
				return out, nil, fmt.Errorf("wire: replay reply: %w", err)
			}
			return out, &rep, fmt.Errorf("%w: %s: %s", ErrReplayRefused, rep.Code, rep.Reason)
		}
		out = append(out, msg.Data...)
		next := msg.Header.Get(ReplayNextHeader)
		if next == "" {
			return out, nil, nil
		}
		if req, err = req.Continue(next); err != nil {
			return out, nil, err
		}
	}
	return out, nil, fmt.Errorf("wire: replay still incomplete after %d parts", maxParts)
}
