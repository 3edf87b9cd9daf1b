package obs

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHealthFlagsAndChecks(t *testing.T) {
	h := &Health{}
	mux := NewMux(h, NewRegistry())
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		b, _ := io.ReadAll(rec.Body)
		return rec.Code, string(b)
	}
	if code, _ := get("/healthz"); code != 503 {
		t.Errorf("/healthz before SetLive: %d", code)
	}
	h.SetLive(true)
	h.SetReady(true)
	var connErr error
	h.AddReadyCheck("nats", func() error { return connErr })
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz with the flag and a passing check: %d", code)
	}
	connErr = errors.New("reconnecting")
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "nats: reconnecting") {
		t.Errorf("/readyz with a failing check: %d %q, want 503 naming it", code, body)
	}
	if !h.Ready() {
		t.Error("Ready reports the component's flag, not the checks")
	}
	h.AddLiveCheck("heartbeat", func() error { return errors.New("stuck") })
	if code, body := get("/healthz"); code != 503 || !strings.Contains(body, "heartbeat: stuck") {
		t.Errorf("/healthz with a failing check: %d %q", code, body)
	}
}
