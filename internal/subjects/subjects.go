// Package subjects is the only code that knows callrouter's NATS subject namespace: token order,
// builders, parsers and the validation or encoding of tokens that come from the outside world.
//
// The namespace (docs/protocol.md is the contract):
//
//	audio.<tenant>.<call>.<leg>      binary frames, ingest → the worker holding the call
//	events.<tenant>.<call>.<kind>    JSON events, workers and routers → anyone
//	ctl.<tenant>.<call>              request-reply to whichever worker holds the call
//	hb.<component>.<id>              heartbeats: liveness (fan-out)
//	hb.<component>.<id>.calls        the call list, as snapshots and deltas (fan-out)
//	bcast.<topic>                    coordination notices (down, drain)
//	router.place                     placement requests (queue group "router")
//	router.api.<verb>                admin API (queue group "router")
//	router.api.<tenant>.<verb>       the admin API confined to one tenant's calls
//	worker.<id>.<verb>               offer/release to one worker
//	ingest.<id>.<verb>               replay/control to one ingest node
//
// The tenant always follows the class token, so NATS permissions such as "audio.acme.>" confine a
// tenant to its own subjects.
package subjects

import (
	"encoding/base64"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
)

// MaxToken is the longest token accepted anywhere in a subject.
const MaxToken = 64

// RouterQueue is the queue group shared by all router replicas.
const RouterQueue = "router"

// Errors returned by validation and parsing.
var (
	// ErrBadToken means a token is empty, too long or holds a character outside [A-Za-z0-9_-~:@+=].
	ErrBadToken = errors.New("subjects: bad token")
	// ErrBadSubject means a subject does not have the shape its parser expects.
	ErrBadSubject = errors.New("subjects: bad subject")
)

// Subject classes (the first token).
const (
	ClassAudio  = "audio"
	ClassEvents = "events"
	ClassCtl    = "ctl"
	ClassHB     = "hb"
	ClassBcast  = "bcast"
)

// Component names used in heartbeat subjects.
const (
	Worker = "worker"
	Ingest = "ingest"
	Router = "router"
)

// Broadcast topics.
const (
	TopicDown = "down"
)

// Fixed subjects.
const (
	Place             = "router.place"
	APIPrefix         = "router.api."
	AllHeartbeats     = "hb.>"
	AllLiveness       = "hb.*.*"       // every component's liveness heartbeat
	AllCallStates     = "hb.*.*.calls" // every worker's and ingest's call list
	TokenCalls        = "calls"
	AllBroadcasts     = "bcast.>"
	AllAudio          = "audio.>"
	WorkerVerbOffer   = "offer"
	WorkerVerbRelease = "release"
	IngestVerbReplay  = "replay"
	IngestVerbPlace   = "place"
	IngestVerbPause   = "pause"
)

func validByte(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	switch c {
	case '-', '_', '~', ':', '@', '+', '=':
		return true
	}
	return false
}

// Valid reports whether s can be used as one subject token as it is.
func Valid(s string) bool {
	if len(s) == 0 || len(s) > MaxToken {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !validByte(s[i]) {
			return false
		}
	}
	return true
}

// Check returns ErrBadToken, naming the token, when s is not Valid.
func Check(what, s string) error {
	if !Valid(s) {
		return fmt.Errorf("%w: %s %q (1-%d of A-Z a-z 0-9 - _ ~ : @ + =)", ErrBadToken, what, s, MaxToken)
	}
	return nil
}

// Encode turns any outside string (a SIP Call-ID, a user name) into a valid token. Valid strings
// that do not start with '~' come back unchanged; anything else becomes "~" followed by the
// unpadded base64url of the bytes, or, when that would be too long, "~=" and a 64-bit FNV hash of
// the string plus a readable prefix. Encode is deterministic, so the same Call-ID always gives the
// same token.
func Encode(s string) string {
	if Valid(s) && s[0] != '~' {
		return s
	}
	enc := base64.RawURLEncoding.EncodeToString([]byte(s))
	if 1+len(enc) <= MaxToken {
		return "~" + enc
	}
	h := fnv.New64a()
	h.Write([]byte(s))
	return fmt.Sprintf("~=%016x%s", h.Sum64(), enc[:MaxToken-18])
}

// Decode reverses Encode where it can; hashed tokens come back as they are, with ok false.
func Decode(tok string) (string, bool) {
	if !strings.HasPrefix(tok, "~") {
		return tok, true
	}
	if strings.HasPrefix(tok, "~=") {
		return tok, false
	}
	b, err := base64.RawURLEncoding.DecodeString(tok[1:])
	if err != nil {
		return tok, false
	}
	return string(b), true
}

// Audio is the subject for one leg's frames of one call.
func Audio(tenant, call, leg string) string {
	return ClassAudio + "." + tenant + "." + call + "." + leg
}

// AudioCall is the wildcard subject a session-mode worker subscribes for all legs of one call.
func AudioCall(tenant, call string) string {
	return ClassAudio + "." + tenant + "." + call + ".*"
}

// Event is the subject for one kind of event of one call.
func Event(tenant, call, kind string) string {
	return ClassEvents + "." + tenant + "." + call + "." + kind
}

// EventsCall is the wildcard subject for every event of one call.
func EventsCall(tenant, call string) string {
	return ClassEvents + "." + tenant + "." + call + ".>"
}

// Ctl is the per-call control subject answered by whichever worker holds the call.
func Ctl(tenant, call string) string {
	return ClassCtl + "." + tenant + "." + call
}

// Heartbeat is the heartbeat subject of one component instance.
func Heartbeat(component, id string) string {
	return ClassHB + "." + component + "." + id
}

// HeartbeatCalls is the subject of one worker's or ingest's call list (snapshots and deltas),
// next to its liveness heartbeat.
func HeartbeatCalls(component, id string) string {
	return ClassHB + "." + component + "." + id + "." + TokenCalls
}

// Bcast is a coordination broadcast subject.
func Bcast(topic string) string { return ClassBcast + "." + topic }

// API is the router admin API subject for one verb.
func API(verb string) string { return APIPrefix + verb }

// TenantAPI is the admin API subject for one verb, confined to one tenant's calls: NATS
// permissions give a tenant's identity router.api.<tenant>.* and nothing wider.
func TenantAPI(tenant, verb string) string { return APIPrefix + tenant + "." + verb }

// ParseAPI parses router.api.<verb> (tenant "") and router.api.<tenant>.<verb>.
func ParseAPI(s string) (tenant, verb string, err error) {
	rest, ok := strings.CutPrefix(s, APIPrefix)
	if !ok {
		return "", "", ErrBadSubject
	}
	tenant, verb, ok = strings.Cut(rest, ".")
	if !ok {
		tenant, verb = "", rest
	} else if !Valid(tenant) {
		return "", "", ErrBadSubject
	}
	if !Valid(verb) {
		return "", "", ErrBadSubject
	}
	return tenant, verb, nil
}

// WorkerVerb is the request subject of one worker.
func WorkerVerb(id, verb string) string { return Worker + "." + id + "." + verb }

// IngestVerb is the request subject of one ingest node.
func IngestVerb(id, verb string) string { return Ingest + "." + id + "." + verb }

// AudioSubject is a parsed audio subject.
type AudioSubject struct {
	Tenant, Call, Leg string
}

// ParseAudio parses audio.<tenant>.<call>.<leg> without allocating.
func ParseAudio(s string) (AudioSubject, error) {
	t, c, l, err := parse3(ClassAudio, s)
	return AudioSubject{Tenant: t, Call: c, Leg: l}, err
}

// EventSubject is a parsed event subject.
type EventSubject struct {
	Tenant, Call, Kind string
}

// ParseEvent parses events.<tenant>.<call>.<kind>.
func ParseEvent(s string) (EventSubject, error) {
	t, c, k, err := parse3(ClassEvents, s)
	return EventSubject{Tenant: t, Call: c, Kind: k}, err
}

// parse3 parses <class>.<a>.<b>.<c>, three valid tokens, without allocating; all empty on error.
func parse3(class, s string) (a, b, c string, err error) {
	rest, ok := strings.CutPrefix(s, class)
	if ok {
		rest, ok = strings.CutPrefix(rest, ".")
	}
	if !ok {
		return "", "", "", ErrBadSubject
	}
	a, rest, ok = strings.Cut(rest, ".")
	if !ok {
		return "", "", "", ErrBadSubject
	}
	b, c, ok = strings.Cut(rest, ".")
	if !ok || !Valid(a) || !Valid(b) || !Valid(c) {
		return "", "", "", ErrBadSubject
	}
	return a, b, c, nil
}

// ParseHeartbeatCalls parses hb.<component>.<id>.calls.
func ParseHeartbeatCalls(s string) (component, id string, err error) {
	rest, ok := strings.CutSuffix(s, "."+TokenCalls)
	if !ok {
		return "", "", ErrBadSubject
	}
	return ParseHeartbeat(rest)
}

// ParseHeartbeat parses hb.<component>.<id>.
func ParseHeartbeat(s string) (component, id string, err error) {
	rest, ok := strings.CutPrefix(s, ClassHB+".")
	if !ok {
		return "", "", ErrBadSubject
	}
	component, id, ok = strings.Cut(rest, ".")
	if !ok || !Valid(component) || !Valid(id) {
		return "", "", ErrBadSubject
	}
	return component, id, nil
}
