package sip

import (
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"
)

// onInfo takes DTMF sent as SIP INFO (application/dtmf-relay "Signal=5\r\nDuration=160", or
// application/dtmf "5"), which some PBXs use instead of RFC 4733. The digit is published like a
// telephone event, at the first leg's current frame position, with "via": "info".
func (s *Server) onInfo(req *sip.Request, tx sip.ServerTransaction) {
	c := s.findCall(req)
	if c == nil {
		s.respond(req, tx, 481, "Call/Transaction Does Not Exist")
		return
	}
	if !s.checkDialog(req, tx, c) {
		return
	}
	ct := ""
	if h := req.ContentType(); h != nil {
		ct = strings.ToLower(strings.TrimSpace(strings.SplitN(h.Value(), ";", 2)[0]))
	}
	digit, durMS, ok := "", 0, false
	switch ct {
	case "application/dtmf-relay":
		digit, durMS, ok = parseDTMFRelay(string(req.Body()))
	case "application/dtmf":
		digit, ok = normalizeDigit(strings.TrimSpace(string(req.Body())))
	case "":
		s.respond(req, tx, 200, "OK") // an empty INFO is a keep-alive
		return
	default:
		s.respond(req, tx, 415, "Unsupported Media Type", sip.NewHeader("Accept", "application/dtmf-relay, application/dtmf"))
		return
	}
	if !ok {
		s.respond(req, tx, 400, "Bad Request", warning(`399 callrouter "no DTMF signal in the INFO body"`))
		return
	}
	defer s.respond(req, tx, 200, "OK") // after the event, so that events keep the INFOs' order
	if len(c.streams) == 0 {
		return
	}
	st := c.streams[0]
	frames := st.emitted.Load()
	spf := uint64(st.codec.rate / 50)
	s.m.dtmf.Inc()
	c.publish("dtmf", dtmfData{Digit: digit, Event: eventCode(digit), Leg: c.plans[0].name, LegIndex: 0, MediaTS: frames * spf,
		Seq: frames, Rate: st.codec.rate, DurationMS: durMS, Ended: true, Via: "info"})
}

// parseDTMFRelay reads "Signal=<d>" and "Duration=<ms>" lines.
func parseDTMFRelay(body string) (digit string, durMS int, ok bool) {
	for _, line := range strings.Split(body, "\n") {
		k, v, found := strings.Cut(strings.TrimSpace(line), "=")
		if !found {
			continue
		}
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "signal":
			digit, ok = normalizeDigit(strings.TrimSpace(v))
		case "duration":
			if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 && n < 60000 {
				durMS = n
			}
		}
	}
	return digit, durMS, ok
}

// normalizeDigit accepts 0-9 * # A-D (and 10, 11 for * and #, as some senders write).
func normalizeDigit(d string) (string, bool) {
	switch {
	case len(d) == 1 && (d[0] >= '0' && d[0] <= '9' || d[0] == '*' || d[0] == '#'):
		return d, true
	case len(d) == 1 && (d[0] >= 'A' && d[0] <= 'D' || d[0] >= 'a' && d[0] <= 'd'):
		return strings.ToUpper(d), true
	case d == "10":
		return "*", true
	case d == "11":
		return "#", true
	case strings.EqualFold(d, "flash") || d == "16":
		return "flash", true
	}
	return "", false
}

// eventCode is the RFC 4733 event code of a digit.
func eventCode(d string) uint8 {
	switch {
	case d == "*":
		return 10
	case d == "#":
		return 11
	case d == "flash":
		return 16
	case d[0] >= 'A' && d[0] <= 'D':
		return 12 + d[0] - 'A'
	}
	return d[0] - '0'
}
