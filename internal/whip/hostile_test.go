package whip

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/obs"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestPanicsEndOneSession injects a panic into the HTTP handler and into one session's track read
// loop: the request gets 500, the poisoned session ends with reason error, and a session running
// next to it keeps every frame.
func TestPanicsEndOneSession(t *testing.T) {
	e := startEnv(t, 1, testConfig())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	panics := func(where string) float64 { return testutil.ToFloat64(guard.Panics.WithLabelValues(where)) }
	h0, r0 := panics("whip_handler"), panics("whip_track")

	handlerPanic := func(r *http.Request) {
		if r.Header.Get("X-Test-Panic") != "" {
			panic("injected handler panic")
		}
	}
	e.whip.handlerHook.Store(&handlerPanic)
	req, _ := http.NewRequestWithContext(ctx, http.MethodOptions, e.url, nil)
	req.Header.Set("X-Test-Panic", "1")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusInternalServerError {
		t.Fatalf("a panicking handler answered %d, want 500", res.StatusCode)
	}

	victim, victimSess, stopVictim := talking(t, ctx, e)
	defer stopVictim()
	good, err := dial(ctx, e.url, tokenGlobex, "pcmu")
	if err != nil {
		t.Fatal(err)
	}
	packetPanic := func(call string, _ []byte) {
		if call == victim.call {
			panic("injected track panic")
		}
	}
	e.whip.packetHook.Store(&packetPanic)
	frames := pcmuFrames(t, "testdata/speech-pcmu.wav")
	frames = append(frames, frames...)
	if err := good.send(ctx, frames); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the poisoned session to end", func() bool { return victimSess.endReason() == reasonError })
	eventually(t, 10*time.Second, "every frame of the other session", func() bool { return len(processed.frames(good.call)) >= len(frames) })
	if code, err := good.hangup(); err != nil || code != http.StatusOK {
		t.Fatalf("DELETE of the other session: %d %v", code, err)
	}
	got := processed.frames(good.call)
	if len(got) != len(frames) || len(processed.gapsOf(good.call)) != 0 {
		t.Fatalf("the other session: %d frames of %d, gaps %v", len(got), len(frames), processed.gapsOf(good.call))
	}
	for i, f := range got {
		if f.h.Seq != uint32(i) || f.h.Has(frame.FlagGapFilled) {
			t.Fatalf("the other session's frame %d: %+v", i, f.h)
		}
	}
	if h, r := panics("whip_handler")-h0, panics("whip_track")-r0; h != 1 || r != 1 {
		t.Errorf("panics counted: handler %v, track %v; want 1 and 1", h, r)
	}
}

// TestEventStreamOutlivesServerTimeouts serves the endpoint on an obs server with short read and
// write timeouts: a call's event stream stays open past them and still delivers the call's end.
func TestEventStreamOutlivesServerTimeouts(t *testing.T) {
	e := startEnv(t, 1, testConfig())
	l := obs.DefaultLimits()
	l.ReadTimeout, l.WriteTimeout = 2*time.Second, 2*time.Second
	hs, err := obs.ListenLimits("127.0.0.1:0", &obs.Health{}, prometheus.NewRegistry(), l)
	if err != nil {
		t.Fatal(err)
	}
	e.whip.Mount(hs.Mux)
	sctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- hs.Run(sctx) }()
	defer func() { stop(); <-served }()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := dial(ctx, "http://"+hs.Addr()+"/whip", tokenAcme, "pcmu")
	if err != nil {
		t.Fatal(err)
	}
	events := follow(t, ctx, c.location+"/events", tokenAcme)
	time.Sleep(2 * l.WriteTimeout) // the stream must outlive the server's timeouts
	if _, err := c.hangup(); err != nil {
		t.Fatal(err)
	}
	ended := false
	for ev := range events {
		ended = ended || (ev.Kind == "state" && ev.State == stateEnded)
	}
	if !ended {
		t.Fatal("the event stream closed before the call's end was on it")
	}
}

// TestPostLimits floods POSTs from 127.0.0.2 past its rate (429 with Retry-After before the
// token is looked at), fills a tenant's session cap (503 for that tenant, 201 for another), and
// checks that a call up from 127.0.0.1 through all of it keeps every frame.
func TestPostLimits(t *testing.T) {
	cfg := testConfig()
	cfg.PostRate, cfg.PostBurst, cfg.MaxSessionsPerTenant = 2, 5, 1
	e := startEnv(t, 1, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	live, err := dial(ctx, e.url, tokenAcme, "pcmu")
	if err != nil {
		t.Fatal(err)
	}
	frames := pcmuFrames(t, "testdata/speech-pcmu.wav")
	frames = append(frames, frames...)
	sent := make(chan error, 1)
	go func() { sent <- live.send(ctx, frames) }()

	flooder := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext}}
	defer flooder.CloseIdleConnections()
	const n = 60
	codes := map[int]int{}
	start := time.Now()
	for i := 0; i < n; i++ {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.url, strings.NewReader("v=0\r\n"))
		req.Header.Set("Content-Type", "application/sdp")
		req.Header.Set("Authorization", "Bearer "+tokenGlobex)
		res, err := flooder.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		codes[res.StatusCode]++
		if res.StatusCode == http.StatusTooManyRequests && res.Header.Get("Retry-After") == "" {
			t.Fatal("429 without Retry-After")
		}
	}
	elapsed := time.Since(start)
	allowed := float64(cfg.PostBurst) + cfg.PostRate*elapsed.Seconds() + 1
	t.Logf("%d POSTs from one source in %v: %v", n, elapsed.Round(time.Millisecond), codes)
	if passed := n - codes[http.StatusTooManyRequests]; float64(passed) > allowed {
		t.Errorf("%d of %d POSTs from one source got past its rate in %v, want at most %.0f", passed, n, elapsed, allowed)
	}

	_, err = dial(ctx, e.url, tokenAcme, "pcmu")
	var he *httpError
	if !errors.As(err, &he) || he.code != http.StatusServiceUnavailable || !strings.Contains(he.body, "too many sessions") {
		t.Errorf("a second session of a tenant at its cap: %v, want 503 too many sessions", err)
	}
	other, err := dial(ctx, e.url, tokenGlobex, "pcmu")
	if err != nil {
		t.Fatalf("another tenant while one is at its cap: %v", err)
	}
	defer other.hangup()

	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "every frame of the live call", func() bool { return len(processed.frames(live.call)) >= len(frames) })
	if code, err := live.hangup(); err != nil || code != http.StatusOK {
		t.Fatalf("DELETE: %d %v", code, err)
	}
	if got, gaps := processed.frames(live.call), processed.gapsOf(live.call); len(got) != len(frames) || len(gaps) != 0 {
		t.Fatalf("the live call: %d frames of %d, gaps %v", len(got), len(frames), gaps)
	}
}
