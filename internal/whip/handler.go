package whip

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/ingest"
	callsession "github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/trace"
)

// Response headers that carry the call's identity, so a page can show it and follow its events.
const (
	HeaderCall   = "X-Callrouter-Call"
	HeaderTenant = "X-Callrouter-Tenant"
)

// Mount registers the endpoint on mux at cfg.Path (and below).
func (s *Server) Mount(mux *http.ServeMux) {
	mux.Handle(s.cfg.Path, s)
	mux.Handle(s.cfg.Path+"/", s)
}

// statusWriter records the status code for the metrics; Unwrap keeps Flush reachable.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// ServeHTTP serves the WHIP endpoint:
//
//	POST    <path>                      SDP offer → 201 + SDP answer, Location: the session URL
//	OPTIONS <path>, <path>/session/<id> CORS preflight
//	DELETE  <path>/session/<id>         ends the call
//	PATCH   <path>/session/<id>         405: trickle ICE and ICE restarts are not supported
//	GET     <path>/session/<id>/events  the call's events (Server-Sent Events)
//	GET     <path>/calls/<call>/events  any call's events, of the token's tenant (watch.go)
//
// DELETE and GET of a session need a token of the session's tenant, as its POST did; a session
// URL answers 404 once the session has ended and lingered (Config.Linger).
func (s *Server) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	w := &statusWriter{ResponseWriter: rw}
	defer func() {
		if w.code == 0 {
			w.code = http.StatusOK
		}
		s.m.requests.WithLabelValues(methodLabel(r.Method), strconv.Itoa(w.code)).Inc()
	}()
	defer guard.Recover("whip_handler", s.log, func(any) {
		if w.code == 0 {
			s.fail(w, r, http.StatusInternalServerError, "internal error")
		}
	})
	if hook := s.handlerHook.Load(); hook != nil {
		(*hook)(r)
	}
	s.cors(w, r)
	rest, ok := strings.CutPrefix(r.URL.Path, s.cfg.Path)
	switch {
	case !ok:
		s.fail(w, r, http.StatusNotFound, "not found")
	case rest == "" || rest == "/":
		switch r.Method {
		case http.MethodPost:
			s.create(w, r)
		case http.MethodOptions:
			w.Header().Set("Accept-Post", "application/sdp")
			w.WriteHeader(http.StatusNoContent)
		default:
			w.Header().Set("Allow", "POST, OPTIONS")
			s.fail(w, r, http.StatusMethodNotAllowed, "method not allowed")
		}
	case strings.HasPrefix(rest, "/calls/"):
		s.watch(w, r)
	case strings.HasPrefix(rest, "/session/"):
		id, sub, _ := strings.Cut(strings.TrimPrefix(rest, "/session/"), "/")
		sess := s.lookup(id)
		if sess == nil {
			if r.Method == http.MethodOptions {
				w.WriteHeader(http.StatusNoContent)
				return
			}
			s.fail(w, r, http.StatusNotFound, "no such session")
			return
		}
		switch {
		case sub == "" && r.Method == http.MethodDelete:
			s.delete(w, r, sess)
		case sub == "" && r.Method == http.MethodOptions, sub == "events" && r.Method == http.MethodOptions:
			w.WriteHeader(http.StatusNoContent)
		case sub == "" && r.Method == http.MethodPatch:
			w.Header().Set("Allow", "DELETE, OPTIONS")
			s.fail(w, r, http.StatusMethodNotAllowed, "trickle ICE and ICE restarts are not supported")
		case sub == "events" && r.Method == http.MethodGet:
			if !s.owns(w, r, sess) {
				return
			}
			s.serveEvents(w, r, sess)
		case sub == "" || sub == "events":
			s.fail(w, r, http.StatusMethodNotAllowed, "method not allowed")
		default:
			s.fail(w, r, http.StatusNotFound, "not found")
		}
	default:
		s.fail(w, r, http.StatusNotFound, "not found")
	}
}

func methodLabel(m string) string {
	switch m {
	case http.MethodPost, http.MethodDelete, http.MethodOptions, http.MethodPatch, http.MethodGet:
		return m
	}
	return "other"
}

func (s *Server) cors(w http.ResponseWriter, r *http.Request) {
	if s.cfg.AllowOrigin == "" {
		return
	}
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", s.cfg.AllowOrigin)
	h.Set("Access-Control-Expose-Headers", "Location, Link, ETag, Retry-After, Accept-Post, "+HeaderCall+", "+HeaderTenant)
	if r.Method == http.MethodOptions {
		h.Set("Access-Control-Allow-Methods", "POST, DELETE, PATCH, GET, OPTIONS")
		h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, If-Match")
		h.Set("Access-Control-Max-Age", "600")
	}
	if s.cfg.AllowOrigin != "*" {
		h.Add("Vary", "Origin")
	}
}

func (s *Server) fail(w http.ResponseWriter, _ *http.Request, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = fmt.Fprintln(w, msg)
}

func (s *Server) unavailable(w http.ResponseWriter, r *http.Request, after time.Duration, msg string) {
	w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(max(after, time.Second).Seconds()))))
	s.fail(w, r, http.StatusServiceUnavailable, msg)
}

// offerReq is what a POST's request says: the tenant its token names, the offer and its codec.
type offerReq struct {
	node   *ingest.Node
	tenant string
	offer  *offer
}

// create handles POST: authenticate, check the offer, take a slot, answer, place the call.
func (s *Server) create(w *statusWriter, r *http.Request) {
	start := time.Now()
	ctx, span := trace.Start(r.Context(), "whip.create", trace.Server)
	defer func() {
		if w.code >= 400 {
			trace.Fail(span, strconv.Itoa(w.code)+" "+http.StatusText(w.code))
		}
		span.End()
	}()
	p, ok := s.readPost(w, r, start)
	if !ok {
		return
	}
	if ok, why := s.acquire(p.tenant); !ok {
		s.unavailable(w, r, s.cfg.RetryAfter, why)
		return
	}
	sess := newSession(s, p.tenant, p.offer.codec)
	trace.SetCall(span, p.tenant, sess.callID)
	kept := false // once added, the session ends its own way
	defer func() {
		if !kept {
			sess.abort()
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.SetupTimeout)
	defer cancel()
	s.register(sess, p.offer)
	answer := buildAnswer(p.offer, &sess.t.local)
	call, placed := s.startCall(ctx, w, r, p, sess)
	if !placed {
		return
	}
	sess.call = call
	close(sess.placed)
	if !s.add(sess) {
		call.End(reasonShutdown)
		s.unavailable(w, r, s.cfg.RetryAfter, "shutting down")
		return
	}
	kept = true
	if s.startWatcher(w, r, sess) {
		s.created(w, sess, answer, start)
	}
}

// readPost checks a POST before any work: the endpoint serves, the source is within its rate,
// the token names a tenant, and the body is an SDP offer within MaxBody with a codec served.
func (s *Server) readPost(w http.ResponseWriter, r *http.Request, start time.Time) (offerReq, bool) {
	node := s.node.Load()
	if node == nil {
		s.unavailable(w, r, s.cfg.RetryAfter, "not serving")
		return offerReq{}, false
	}
	if !s.post.Allow(remoteIP(r.RemoteAddr), start) {
		w.Header().Set("Retry-After", "1")
		s.fail(w, r, http.StatusTooManyRequests, "too many requests from this address")
		return offerReq{}, false
	}
	tenant, err := s.auth.tenant(r.Header.Get("Authorization"))
	if err != nil {
		w.Header().Set("WWW-Authenticate", `Bearer realm="callrouter"`)
		s.fail(w, r, http.StatusUnauthorized, err.Error())
		return offerReq{}, false
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/sdp" {
		s.fail(w, r, http.StatusUnsupportedMediaType, "content type must be application/sdp")
		return offerReq{}, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.fail(w, r, http.StatusRequestEntityTooLarge, fmt.Sprintf("offer larger than %d bytes", s.cfg.MaxBody))
			return offerReq{}, false
		}
		s.fail(w, r, http.StatusBadRequest, "reading offer: "+err.Error())
		return offerReq{}, false
	}
	o, err := parseOffer(body, s.cfg.Codecs)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return offerReq{}, false
	}
	return offerReq{node: node, tenant: tenant, offer: o}, true
}

// startCall subscribes to the call's events, then places the call on the ingest node; on failure
// it has answered.
func (s *Server) startCall(ctx context.Context, w http.ResponseWriter, r *http.Request, p offerReq, sess *session) (*ingest.Call, bool) {
	var err error
	// Subscribe to the call's events before it starts, so the event stream has its "start".
	sess.sub, err = p.node.NC().Subscribe(subjects.EventsCall(p.tenant, sess.callID), guard.Handler("whip_events", sess.log, sess.onEvent))
	if err != nil {
		s.unavailable(w, r, s.cfg.RetryAfter, "events: "+err.Error())
		return nil, false
	}
	spec := callsession.Spec{ID: callsession.ID{Tenant: p.tenant, Call: sess.callID},
		Legs: []callsession.Leg{{Index: 0, Name: "caller", Codec: p.offer.codec.frame, Rate: p.offer.codec.clock}},
		Meta: map[string]string{"source": "whip", "codec": p.offer.codec.name}}
	if ua := r.Header.Get("User-Agent"); ua != "" {
		spec.Meta["user_agent"] = ua[:min(len(ua), 200)]
	}
	call, err := p.node.StartCall(ctx, spec)
	if err != nil {
		if after, temporary := ingest.RetryAfter(err); temporary {
			s.unavailable(w, r, after, err.Error())
			return nil, false
		}
		s.fail(w, r, http.StatusInternalServerError, err.Error())
		return nil, false
	}
	return call, true
}

// startWatcher starts the session's watcher and its DTLS server, unless the session failed while
// the call was being placed or the server is shutting down: then the call ends and the POST gets
// 503.
func (s *Server) startWatcher(w http.ResponseWriter, r *http.Request, sess *session) bool {
	select {
	case <-sess.done: // the session failed while the call was being placed
		sess.call.End(sess.endReason())
		s.unavailable(w, r, s.cfg.RetryAfter, "session ended during setup")
		return false
	default:
	}
	if !s.spawn(func() {
		defer guard.Recover("whip_session", sess.log, sess.failed)
		sess.watch()
	}) || !s.spawn(sess.runDTLS) {
		sess.end(reasonShutdown)
		s.unavailable(w, r, s.cfg.RetryAfter, "shutting down")
		return false
	}
	return true
}

// created answers 201 with the SDP answer, the session URL and the call's identity.
func (s *Server) created(w http.ResponseWriter, sess *session, answer string, start time.Time) {
	loc := s.cfg.Path + "/session/" + sess.id
	h := w.Header()
	h.Set("Location", loc)
	h.Set("Content-Type", "application/sdp")
	h.Set(HeaderCall, sess.callID)
	h.Set(HeaderTenant, sess.tenant)
	h.Add("Link", fmt.Sprintf(`<%s/events>; rel="events"`, loc))
	w.WriteHeader(http.StatusCreated)
	_, _ = io.WriteString(w, answer)
	s.m.setup.Observe(time.Since(start).Seconds())
	sess.log.Info().Str("codec", sess.codec.name).Dur("setup", time.Since(start)).Msg("whip session created")
}

// delete handles DELETE on a session URL: the caller must own the session (owns).
func (s *Server) delete(w http.ResponseWriter, r *http.Request, sess *session) {
	if !s.owns(w, r, sess) {
		return
	}
	sess.end(reasonDelete)
	w.WriteHeader(http.StatusOK)
}

// owns answers 401 and returns false unless the request's token is one of the session's tenant
// (or it has none and the session's tenant is the open tenant): a session URL, leaked or
// guessed, is no use without its tenant's token.
func (s *Server) owns(w http.ResponseWriter, r *http.Request, sess *session) bool {
	tenant, err := s.auth.tenant(r.Header.Get("Authorization"))
	if err != nil || tenant != sess.tenant {
		w.Header().Set("WWW-Authenticate", `Bearer realm="callrouter"`)
		s.fail(w, r, http.StatusUnauthorized, "token does not own this session")
		return false
	}
	return true
}

// remoteIP is the IP of a request's remote address (host:port), or the zero Addr.
func remoteIP(remote string) netip.Addr {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr()
}
