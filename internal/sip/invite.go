package sip

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/sdp"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/trace"
	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// legPlan is one answered media line that becomes a leg.
type legPlan struct {
	media   int // index of the m= line
	name    string
	codec   codec
	audioPT uint8
	eventPT int
	remote  netip.AddrPort
	crypto  *sdesKey // the offerer's SRTP key; nil for plain RTP
}

// offerError is an offer callrouter cannot serve, with the response to send.
type offerError struct {
	code   int
	reason string
	warn   string // Warning header text (RFC 3261 section 20.43)
}

func (e *offerError) Error() string { return fmt.Sprintf("%d %s: %s", e.code, e.reason, e.warn) }

func notAcceptable(w string) *offerError {
	return &offerError{code: 488, reason: "Not Acceptable Here", warn: w}
}

// negotiate picks, for every offered audio line that becomes a leg, the codec and
// telephone-event payload types, and builds the answer lines.
func (s *Server) negotiate(off *sdp.Session, rec *recording) ([]legPlan, []sdp.Answer, error) {
	answers := make([]sdp.Answer, len(off.Media))
	var plans []legPlan
	plainRefused := false
	for i := range off.Media {
		m := &off.Media[i]
		answers[i] = sdp.Answer{Type: m.Type, Proto: m.Proto, Formats: m.Formats[:min(1, len(m.Formats))], Label: m.Label}
		if m.Type != "audio" || m.Port == 0 {
			continue // rejected with port 0
		}
		var key *sdesKey
		switch m.Proto {
		case "RTP/AVP", "RTP/AVPF":
			if s.cfg.SRTP == SRTPRequired {
				plainRefused = true
				continue
			}
		case "RTP/SAVP", "RTP/SAVPF":
			k, ok := pickCrypto(m.Crypto)
			if s.cfg.SRTP == SRTPOff || !ok {
				continue // no SDES key callrouter can use (DTLS-SRTP is WebRTC's, on WHIP)
			}
			key = &k
		default:
			continue
		}
		if rec == nil && len(plans) == 1 {
			continue // a plain call has one leg; further audio lines are rejected
		}
		p := legPlan{media: i, eventPT: -1, crypto: key}
		found := false
	pick:
		for _, f := range m.Formats {
			for _, c := range s.codecs {
				if strings.EqualFold(f.Encoding, c.enc) && f.Clock == uint32(c.clock) && f.Channels <= 1 {
					p.codec, p.audioPT, found = c, f.PT, true
					break pick
				}
			}
		}
		if !found {
			continue
		}
		ans := []sdp.Format{{PT: p.audioPT, Encoding: p.codec.enc, Clock: uint32(p.codec.clock)}}
		for _, f := range m.Formats {
			if strings.EqualFold(f.Encoding, "telephone-event") && f.Clock == uint32(p.codec.clock) {
				p.eventPT = int(f.PT)
				ans = append(ans, sdp.Format{PT: f.PT, Encoding: "telephone-event", Clock: f.Clock, Fmtp: "0-16"})
				break
			}
		}
		if !m.Conn.IsValid() {
			return nil, nil, &offerError{code: 400, reason: "Bad Request", warn: "media line without connection address"}
		}
		p.remote = netip.AddrPortFrom(m.Conn, uint16(m.Port))
		dir := sdp.RecvOnly
		if m.Direction == sdp.RecvOnly || m.Direction == sdp.Inactive {
			dir = sdp.Inactive
		}
		answers[i] = sdp.Answer{Type: m.Type, Proto: m.Proto, Formats: ans, Direction: dir, Label: m.Label, Port: -1}
		if key != nil {
			c, err := answerCrypto(*key)
			if err != nil {
				return nil, nil, err
			}
			answers[i].Crypto = c
		}
		plans = append(plans, p)
	}
	if len(plans) == 0 && plainRefused {
		return nil, nil, notAcceptable(`305 callrouter "Incompatible media format: SRTP (RTP/SAVP with a=crypto) is required"`)
	}
	if len(plans) == 0 {
		return nil, nil, notAcceptable(`305 callrouter "Incompatible media format: no audio line with ` + strings.Join(s.cfg.Codecs, ", ") + `"`)
	}
	if err := s.nameLegs(plans, off, rec); err != nil {
		return nil, nil, err
	}
	return plans, answers, nil
}

// nameLegs names the legs: a plain call's one leg gets Config.LegName; a SIPREC call's legs are
// named after the participant that sends each stream, in metadata order, and ordered so.
func (s *Server) nameLegs(plans []legPlan, off *sdp.Session, rec *recording) error {
	if rec == nil {
		plans[0].name = s.pol.legName
		return nil
	}
	if len(plans) > session.MaxLegs {
		return notAcceptable(`305 callrouter "too many recorded streams"`)
	}
	used := map[string]bool{}
	order := make([]int, len(plans)) // participant index per plan, for ordering
	for i := range plans {
		label := off.Media[plans[i].media].Label
		pi := rec.senderOfLabel(label)
		order[i] = pi
		name := ""
		if pi >= 0 && pi < len(s.pol.siprecNames) {
			name = s.pol.siprecNames[pi]
		}
		if name == "" || used[name] {
			name = "leg" + strconv.Itoa(i)
			if label != "" && subjects.Valid("label"+label) {
				name = "label" + label
			}
		}
		used[name] = true
		plans[i].name = name
	}
	// order legs by participant (unknown senders last, in media order)
	for i := 1; i < len(plans); i++ {
		for j := i; j > 0 && less(order[j], order[j-1]); j-- {
			plans[j], plans[j-1] = plans[j-1], plans[j]
			order[j], order[j-1] = order[j-1], order[j]
		}
	}
	return nil
}

func less(a, b int) bool {
	if a < 0 {
		return false
	}
	return b < 0 || a < b
}

// invite is a new INVITE being answered: what each step of onInvite learns.
type invite struct {
	req       *sip.Request
	tx        sip.ServerTransaction
	start     time.Time
	ctx       context.Context // holds the sip.invite span
	span      trace.Span
	from      peer
	user      *AuthUser
	tenant    string
	rec       *recording
	expires   time.Duration
	refresher string
	plans     []legPlan
	answers   []sdp.Answer
}

// onInvite answers a new INVITE, or a re-INVITE within a call: the request is checked,
// authorized, its offer read and negotiated; then a dialog, RTP ports and a placement are taken,
// and the 200 OK carries the answer. Every step that refuses has answered.
func (s *Server) onInvite(req *sip.Request, tx sip.ServerTransaction) {
	start := time.Now()
	if to := req.To(); to != nil && to.Params != nil {
		if tag, ok := to.Params.Get("tag"); ok && tag != "" {
			s.onReinvite(req, tx)
			return
		}
	}
	inv := &invite{req: req, tx: tx, start: start}
	inv.ctx, inv.span = trace.Start(s.ctx, "sip.invite", trace.Server, trace.String("sip.transport", req.Transport()))
	defer inv.span.End()
	if !s.checkInvite(inv) || !s.authorize(inv) || !s.readOffer(inv) || !s.admit(inv) {
		return
	}
	dlg, err := s.dialogs[dialogKey(req)].ReadInvite(req, tx)
	if err != nil {
		s.reject(inv, 400, "Bad Request", warning(`399 callrouter "`+quote(err.Error())+`"`))
		return
	}
	_ = dlg.Respond(100, "Trying", nil)
	c := s.newCall(inv, dlg)
	if err := c.openStreams(inv.plans, inv.answers); err != nil {
		c.releaseStreams()
		trace.Fail(inv.span, "no RTP port free")
		s.respondDialog(dlg, req, tx, 503, "Service Unavailable", sip.NewHeader("Retry-After", "5"), warning(`399 callrouter "no RTP port free"`))
		return
	}
	if !s.placeCall(inv, c) {
		return
	}
	s.sendAnswer(inv, c)
}

// reject answers the INVITE with a final response and marks its span failed.
func (s *Server) reject(inv *invite, code int, reason string, hdrs ...sip.Header) {
	trace.Fail(inv.span, strconv.Itoa(code)+" "+reason)
	s.respond(inv.req, inv.tx, code, reason, hdrs...)
}

// checkInvite checks the request itself: the transport a sips URI needs, the headers a dialog
// needs (supplying the Contact and From tag an RFC 2543 client may omit), an acceptable answer.
func (s *Server) checkInvite(inv *invite) bool {
	req := inv.req
	if req.Recipient.Scheme == "sips" && req.Transport() != "TLS" {
		// RFC 3261 section 26.2.2: a sips request-URI asks for TLS on every hop.
		s.reject(inv, 416, "Unsupported URI Scheme", warning(`399 callrouter "sips needs TLS"`))
		return false
	}
	if req.Contact() == nil && req.From() != nil {
		// RFC 2543 INVITEs may omit Contact: the From address is the remote target then.
		req.AppendHeader(&sip.ContactHeader{Address: req.From().Address})
	}
	if f := req.From(); f != nil {
		if tag, ok := f.Params.Get("tag"); !ok || tag == "" {
			// RFC 2543 requests have no From tag (or one sipgo cannot read): a deterministic one
			// lets the dialog form; the response carries it back.
			if f.Params == nil {
				f.Params = sip.NewParams()
			}
			h := fnv.New64a()
			h.Write([]byte(f.Value()))
			if id := req.CallID(); id != nil {
				h.Write([]byte(id.Value()))
			}
			f.Params.Add("tag", "cr2543-"+strconv.FormatUint(h.Sum64(), 36))
		}
	}
	if req.Contact() == nil || req.CallID() == nil || req.From() == nil || req.To() == nil || req.CSeq() == nil ||
		req.CSeq().MethodName != sip.INVITE {
		s.reject(inv, 400, "Bad Request", warning(`399 callrouter "missing or inconsistent Contact, Call-ID, From, To or CSeq"`))
		return false
	}
	if !acceptsSDP(req) {
		s.reject(inv, 406, "Not Acceptable", sip.NewHeader("Accept", "application/sdp, multipart/mixed"))
		return false
	}
	return true
}

// authorize checks the digest credentials (when configured) and finds the call's tenant, which
// the digest user must be allowed to call for.
func (s *Server) authorize(inv *invite) bool {
	req := inv.req
	src := sourceAddr(req) // the transport guards have applied the allow-list
	inv.from = peerOf(req)
	if s.auth != nil {
		name, ok, stale := "", false, false
		if h := req.GetHeader("Authorization"); h != nil {
			name, ok, stale = s.auth.check(h.Value(), string(req.Method))
		}
		if !ok {
			s.reject(inv, 401, "Unauthorized", sip.NewHeader("WWW-Authenticate", s.auth.challenge(stale)))
			return false
		}
		inv.from.user = name
		u := s.cfg.AuthUsers[name]
		inv.user = &u
	}
	tenant, ok := s.pol.tenant(req, src, inv.user)
	if !ok {
		trace.Fail(inv.span, "403 tenant")
		s.forbid(req, inv.tx, "tenant")
		return false
	}
	if inv.user != nil && inv.user.Tenant != AnyTenant && inv.user.Tenant != tenant {
		s.secLog.Warn().Str("user", inv.from.user).Str("tenant", tenant).Msg("SIP digest user called for another tenant")
		trace.Fail(inv.span, "403 user_tenant")
		s.forbid(req, inv.tx, "user_tenant")
		return false
	}
	inv.tenant = tenant
	trace.SetCall(inv.span, tenant, subjects.Encode(req.CallID().Value()))
	return true
}

// readOffer reads the body (SDP, or SIPREC's multipart with metadata), the session timer, and
// negotiates the legs to answer.
func (s *Server) readOffer(inv *invite) bool {
	req := inv.req
	ct := ""
	if h := req.ContentType(); h != nil {
		ct = h.Value()
	}
	b, err := parseBody(ct, req.Body())
	switch {
	case errors.Is(err, errMediaType):
		s.reject(inv, 415, "Unsupported Media Type", sip.NewHeader("Accept", "application/sdp, multipart/mixed"))
		return false
	case err != nil:
		s.reject(inv, 400, "Bad Request", warning(`399 callrouter "`+quote(err.Error())+`"`))
		return false
	case b.sdp == nil:
		s.reject(inv, 488, "Not Acceptable Here", warning(`399 callrouter "an SDP offer is required in the INVITE"`))
		return false
	}
	off, err := sdp.Parse(b.sdp)
	if err != nil {
		s.reject(inv, 400, "Bad Request", warning(`399 callrouter "`+quote(err.Error())+`"`))
		return false
	}
	if b.metadata != nil {
		if inv.rec, err = parseMetadata(b.metadata); err != nil {
			s.reject(inv, 400, "Bad Request", warning(`399 callrouter "`+quote(err.Error())+`"`))
			return false
		}
	}
	if inv.expires, inv.refresher, err = s.sessionTimer(req); err != nil {
		s.reject(inv, 422, "Session Interval Too Small", sip.NewHeader("Min-SE", strconv.Itoa(int(s.cfg.MinSessionExpires/time.Second))))
		return false
	}
	if inv.plans, inv.answers, err = s.negotiate(off, inv.rec); err != nil {
		var oe *offerError
		if errors.As(err, &oe) {
			s.reject(inv, oe.code, oe.reason, warning(oe.warn))
		} else {
			s.reject(inv, 500, "Server Internal Error")
		}
		return false
	}
	return true
}

// admit refuses a new call while draining (503) or at the call limit (486).
func (s *Server) admit(inv *invite) bool {
	draining, full := s.registry.Draining(), s.registry.Live() >= s.cfg.MaxCalls
	if draining {
		s.reject(inv, 503, "Service Unavailable", sip.NewHeader("Retry-After", "5"))
		return false
	}
	if full {
		s.reject(inv, 486, "Busy Here", warning(`399 callrouter "call limit reached"`))
		return false
	}
	return true
}

// newCall is the call state of an admitted INVITE whose dialog is formed.
func (s *Server) newCall(inv *invite, dlg *sipgo.DialogServerSession) *callState {
	c := &callState{s: s, dlg: dlg, peer: inv.from, tenant: inv.tenant, expires: inv.expires, refresher: inv.refresher, rec: inv.rec,
		start: time.Now(), done: make(chan struct{}), failed: make(chan struct{}), expired: make(chan string, 1)}
	c.log = s.log.With().Str("tenant", inv.tenant).Str("sip_call_id", inv.req.CallID().Value()).Logger()
	return c
}

// callSpec is the session the call places: its legs, the SIP metadata, SRTP and SIPREC participants.
func (c *callState) callSpec(req *sip.Request) session.Spec {
	spec := session.Spec{ID: session.ID{Tenant: c.tenant, Call: subjects.Encode(req.CallID().Value())}, Meta: c.s.pol.metadata(req)}
	for i, p := range c.plans {
		spec.Legs = append(spec.Legs, session.Leg{Index: uint8(i), Name: p.name, Codec: p.codec.fc, Rate: p.codec.rate})
	}
	if p := c.plans[0]; p.crypto != nil {
		spec.Meta["sip.srtp"] = p.crypto.suite
	}
	if c.rec != nil {
		spec.Meta["siprec"] = "true"
		for k, v := range c.participantMeta() {
			spec.Meta[k] = v
		}
	}
	return spec
}

// placeCall starts the call on the ingest node (a CANCEL aborts the placement) and adds it to the
// server's calls; on failure it has answered and released the ports.
func (s *Server) placeCall(inv *invite, c *callState) bool {
	req, tx, dlg := inv.req, inv.tx, c.dlg
	spec := c.callSpec(req)
	ctx, cancel := context.WithTimeout(inv.ctx, s.cfg.PlaceTimeout)
	stop := context.AfterFunc(dlg.Context(), cancel) // CANCEL aborts placement
	call, err := s.node.StartCall(ctx, spec)
	stop()
	cancel()
	if err != nil {
		c.releaseStreams()
		trace.Fail(inv.span, "placement: "+err.Error())
		s.refuse(dlg, req, tx, err)
		return false
	}
	c.call = call
	c.spec = spec
	if !s.add(c) {
		call.End("shutdown")
		c.releaseStreams()
		trace.Fail(inv.span, "shutting down")
		s.respondDialog(dlg, req, tx, 503, "Service Unavailable", sip.NewHeader("Retry-After", "5"))
		return false
	}
	return true
}

// sendAnswer starts the call's media and sends the 200 OK with the SDP answer; a 200 never
// acknowledged (or a CANCEL that crossed it) ends the call.
func (s *Server) sendAnswer(inv *invite, c *callState) {
	dlg := c.dlg
	c.startStreams()
	res := sip.NewSDPResponseFromRequest(dlg.InviteRequest, c.answerSDP())
	for _, h := range c.timerHeaders() {
		res.AppendHeader(h)
	}
	res.AppendHeader(s.allowHeaders()[0])
	took := time.Since(inv.start)
	s.m.answer.Observe(took.Seconds())
	if s.answerHook != nil {
		s.answerHook(took)
	}
	s.m.requests.WithLabelValues("INVITE", "200").Inc()
	c.log.Info().Str("call", c.spec.Call).Int("legs", len(c.spec.Legs)).Dur("answer", time.Since(inv.start)).Msg("SIP call answered")
	if err := dlg.WriteResponse(res); err != nil {
		reason := "no_ack"
		if dlg.Context().Err() != nil {
			reason = "cancel"
		}
		trace.Fail(inv.span, "200 OK not acknowledged: "+reason)
		c.finish(reason, reason == "no_ack")
		return
	}
}

// refuse answers a failed placement: 503 with Retry-After for refusals and temporary trouble.
func (s *Server) refuse(dlg dialogResponder, req *sip.Request, tx sip.ServerTransaction, err error) {
	if ra, ok := ingest.RetryAfter(err); ok {
		secs := int(math.Ceil(ra.Seconds()))
		s.respondDialog(dlg, req, tx, 503, "Service Unavailable", sip.NewHeader("Retry-After", strconv.Itoa(max(1, secs))),
			warning(`399 callrouter "`+quote(err.Error())+`"`))
		return
	}
	switch {
	case errors.Is(err, ingest.ErrDuplicate):
		s.respondDialog(dlg, req, tx, 482, "Loop Detected", warning(`399 callrouter "call already in progress"`))
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		s.respondDialog(dlg, req, tx, 503, "Service Unavailable", sip.NewHeader("Retry-After", "5"))
	default:
		s.respondDialog(dlg, req, tx, 500, "Server Internal Error", warning(`399 callrouter "`+quote(err.Error())+`"`))
	}
}

type dialogResponder interface {
	Respond(code int, reason string, body []byte, hdrs ...sip.Header) error
}

func (s *Server) respondDialog(dlg dialogResponder, req *sip.Request, tx sip.ServerTransaction, code int, reason string, hdrs ...sip.Header) {
	s.m.requests.WithLabelValues("INVITE", strconv.Itoa(code)).Inc()
	_ = dlg.Respond(code, reason, nil, hdrs...)
	sendOnce(req, tx, code)
}

// acceptsSDP reports whether the request's Accept headers, if any, admit an SDP answer.
func acceptsSDP(req *sip.Request) bool {
	hs := req.GetHeaders("Accept")
	if len(hs) == 0 {
		return true
	}
	for _, h := range hs {
		for _, t := range strings.Split(h.Value(), ",") {
			mt, _, _ := strings.Cut(strings.TrimSpace(strings.ToLower(t)), ";")
			if mt == "application/sdp" || mt == "application/*" || mt == "*/*" || strings.HasPrefix(mt, "multipart/") {
				return true
			}
		}
	}
	return false
}

func warning(text string) sip.Header { return sip.NewHeader("Warning", text) }

func quote(s string) string {
	s = strings.NewReplacer(`"`, `'`, "\r", " ", "\n", " ", `\`, "/").Replace(s)
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

// sessionTimer reads Session-Expires (RFC 4028 section 4): zero when absent; an error when below
// the minimum.
func (s *Server) sessionTimer(req *sip.Request) (time.Duration, string, error) {
	h := req.GetHeader("Session-Expires")
	if h == nil {
		h = req.GetHeader("x")
	}
	if h == nil {
		return 0, "", nil
	}
	v, params, _ := strings.Cut(h.Value(), ";")
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n <= 0 {
		return 0, "", nil // unparseable: ignored
	}
	d := time.Duration(n) * time.Second
	if d < s.cfg.MinSessionExpires {
		return 0, "", errors.New("session interval too small")
	}
	refresher := "uac"
	if strings.Contains(strings.ReplaceAll(params, " ", ""), "refresher=uas") {
		refresher = "uas"
	}
	return d, refresher, nil
}

// onReinvite answers an INVITE within a call: new SIPREC metadata is applied and published,
// a new remote media address is taken, and the answer repeats callrouter's media.
func (s *Server) onReinvite(req *sip.Request, tx sip.ServerTransaction) {
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
		ct = h.Value()
	}
	b, err := parseBody(ct, req.Body())
	if errors.Is(err, errMediaType) {
		s.respond(req, tx, 415, "Unsupported Media Type", sip.NewHeader("Accept", "application/sdp, multipart/mixed"))
		return
	}
	if err != nil {
		s.respond(req, tx, 400, "Bad Request", warning(`399 callrouter "`+quote(err.Error())+`"`))
		return
	}
	var off *sdp.Session
	if b.sdp != nil {
		if off, err = sdp.Parse(b.sdp); err != nil {
			s.respond(req, tx, 400, "Bad Request", warning(`399 callrouter "`+quote(err.Error())+`"`))
			return
		}
	}
	var rec *recording
	if b.metadata != nil {
		if rec, err = parseMetadata(b.metadata); err != nil {
			s.respond(req, tx, 400, "Bad Request", warning(`399 callrouter "`+quote(err.Error())+`"`))
			return
		}
	}
	c.reinvite(req, off, rec)
	res := sip.NewSDPResponseFromRequest(req, c.answerSDP())
	contact := s.contacts[dialogKey(req)]
	res.AppendHeader(&contact)
	for _, h := range c.timerHeaders() {
		res.AppendHeader(h)
	}
	s.m.requests.WithLabelValues("INVITE", "200").Inc()
	_ = tx.Respond(res)
}
