package whip

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/player"
)

// TestWatchCall follows a call that no page placed (a file source, as a SIP call would be) by
// its id: the token's tenant only, the stream from "watching" through the call's end and the
// worker's accounting, closed Linger after the end; bounds per call; bad requests refused.
func TestWatchCall(t *testing.T) {
	cfg := testConfig()
	cfg.Linger, cfg.SSEClients = time.Second, 2
	e := startEnv(t, 1, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	watchURL := e.url + "/calls/c-watch/events"

	for _, tc := range []struct {
		method, url, token string
		code               int
	}{
		{http.MethodGet, watchURL, "", http.StatusUnauthorized},
		{http.MethodGet, watchURL, "not-a-known-token-0123", http.StatusUnauthorized},
		{http.MethodGet, e.url + "/calls/c-watch/other", tokenAcme, http.StatusNotFound},
		{http.MethodGet, e.url + "/calls/" + strings.Repeat("x", maxWatchCall+1) + "/events", tokenAcme, http.StatusBadRequest},
		{http.MethodGet, e.url + "/calls/%ff/events", tokenAcme, http.StatusBadRequest},
		{http.MethodPost, watchURL, tokenAcme, http.StatusMethodNotAllowed},
	} {
		req, _ := http.NewRequestWithContext(ctx, tc.method, tc.url, nil)
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != tc.code {
			t.Errorf("%s %s (token %q): %d, want %d", tc.method, tc.url, tc.token, res.StatusCode, tc.code)
		}
	}

	acme := follow(t, ctx, watchURL, tokenAcme)
	gctx, gcancel := context.WithCancel(ctx)
	defer gcancel()
	globex := follow(t, gctx, watchURL, tokenGlobex) // the same call id in another tenant
	for name, ch := range map[string]<-chan streamed{"acme": acme, "globex": globex} {
		if ev := <-ch; ev.Kind != "state" || ev.State != "watching" {
			t.Fatalf("%s: first message %+v, want the watching state", name, ev)
		}
	}
	// A second stream on the call is allowed (SSEClients 2), a third is not.
	acme2 := follow(t, ctx, watchURL, tokenAcme)
	<-acme2
	if res, err := getEvents(ctx, watchURL, tokenAcme); err != nil || res.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("third stream on one call: %v %v, want 429", res.StatusCode, err)
	}

	payload := make([]byte, 160)
	for i := range payload {
		payload[i] = 0xFF
	}
	rec := &filesrc.Recording{Codec: frame.CodecPCMU, Rate: 8000, Frames: [][][]byte{make([][]byte, 25), make([][]byte, 25)}}
	for leg := range rec.Frames {
		for i := range rec.Frames[leg] {
			rec.Frames[leg][i] = payload
		}
	}
	if _, err := player.Play(ctx, e.stack.Ingest, rec, rec.Spec("acme", "c-watch", nil), 0, 1); err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	ended := time.Time{}
	for ev := range acme { // closes Linger after "end"
		kinds[ev.Kind]++
		if ev.Kind == "end" {
			ended = time.Now()
		}
	}
	if kinds["start"] != 1 || kinds["end"] != 1 || kinds["accounting"] != 1 || kinds["stopped"] != 1 || kinds["placed"] != 1 {
		t.Errorf("watched events: %v; want placed, start, end, accounting, stopped once each", kinds)
	}
	if ended.IsZero() || ctx.Err() != nil {
		t.Fatalf("the stream did not close after the call's end (%v)", ctx.Err())
	}
	for range acme2 {
	}
	select {
	case ev, ok := <-globex:
		if ok {
			t.Errorf("another tenant's stream got %+v", ev)
		}
	case <-time.After(200 * time.Millisecond):
	}
	gcancel()
	eventually(t, 5*time.Second, "watch slots released", func() bool {
		e.whip.watching.mu.Lock()
		defer e.whip.watching.mu.Unlock()
		return e.whip.watching.n == 0 && len(e.whip.watching.calls) == 0
	})
}
