package whip

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/guard"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// FuzzHandler serves arbitrary requests (method, path below the endpoint, Authorization,
// Content-Type, body) on a running endpoint: every answer is one of the documented statuses
// (never a 500, which would be a recovered panic), nothing panics, and the requests metric keeps
// its bounded label set. Seeds: a valid offer, the bad requests of TestBadRequests' kinds, and
// each session URL method.
func FuzzHandler(f *testing.F) {
	offer := offerSDP(f, "pcmu")
	for _, s := range []struct{ method, path, auth, ctype, body string }{
		{"POST", "", "Bearer " + tokenAcme, "application/sdp", offer},
		{"POST", "/", "", "application/sdp", offer},
		{"POST", "", "Bearer nope-nope-nope", "application/sdp", offer},
		{"POST", "", "Bearer " + tokenAcme, "text/plain", offer},
		{"POST", "", "Bearer " + tokenAcme, "application/sdp", "v=0\r\n"},
		{"OPTIONS", "", "", "", ""},
		{"DELETE", "/session/abc", "Bearer " + tokenAcme, "", ""},
		{"PATCH", "/session/abc", "", "application/trickle-ice-sdpfrag", "a=ice-ufrag:x\r\n"},
		{"GET", "/session/abc/events", "", "", ""},
		{"BREW", "/session/../x", "Basic Zm9vOmJhcg==", "", ""},
	} {
		f.Add(s.method, s.path, s.auth, s.ctype, []byte(s.body))
	}
	cfg := testConfig()
	cfg.MaxSessions, cfg.ConnectTimeout, cfg.SetupTimeout, cfg.Linger, cfg.PostRate = 4, time.Second, 5*time.Second, time.Second, 0
	e := startEnv(f, 1, cfg)
	panics := func() float64 {
		sum := 0.0
		for _, w := range []string{"whip_handler", "whip_track", "whip_callback", "whip_events"} {
			sum += testutil.ToFloat64(guard.Panics.WithLabelValues(w))
		}
		return sum
	}
	p0 := panics()
	allowed := map[int]bool{200: true, 201: true, 204: true, 400: true, 401: true, 404: true, 405: true, 413: true, 415: true,
		429: true, 503: true}
	f.Fuzz(func(t *testing.T, method, path, auth, ctype string, body []byte) {
		req, err := http.NewRequest(method, "http://callrouter"+cfg.Path+path, bytes.NewReader(body))
		if err != nil {
			return // not a request net/http would hand to a handler
		}
		req.Header.Set("Authorization", auth)
		req.Header.Set("Content-Type", ctype)
		rec := httptest.NewRecorder()
		e.whip.ServeHTTP(rec, req)
		if !allowed[rec.Code] {
			t.Fatalf("%s %q answered %d: %s", method, path, rec.Code, rec.Body.String())
		}
		if p := panics(); p != p0 {
			t.Fatalf("%s %q: %v panics recovered", method, path, p-p0)
		}
		if n := testutil.CollectAndCount(e.whip.m.requests); n > 6*len(allowed) {
			t.Fatalf("%d request series", n)
		}
	})
}
