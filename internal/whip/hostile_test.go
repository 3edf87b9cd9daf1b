package whip

import (
	"context"
	"net/http"
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
	events := follow(t, ctx, c.location+"/events")
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
