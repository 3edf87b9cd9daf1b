package whip

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

// talking dials a PCMU session that loops a recording until the returned stop is called, and
// waits for its first frame at the worker.
func talking(t *testing.T, ctx context.Context, e *env) (c *client, sess *session, stop func()) {
	t.Helper()
	c, err := dial(ctx, e.url, tokenAcme, "pcmu")
	if err != nil {
		t.Fatal(err)
	}
	frames := pcmuFrames(t, "testdata/speech-pcmu.wav")
	sendCtx, cancel := context.WithCancel(ctx)
	sending := make(chan struct{})
	go func() {
		defer close(sending)
		for sendCtx.Err() == nil {
			if err := c.send(sendCtx, frames); err != nil && sendCtx.Err() == nil {
				time.Sleep(20 * time.Millisecond) // the session went away: do not spin
			}
		}
	}()
	stop = func() { cancel(); <-sending }
	eventually(t, 20*time.Second, "frames at the worker", func() bool { return len(processed.frames(c.call)) > 0 })
	return c, e.whip.lookup(sessionID(c.location)), stop
}

func (s *Server) isDraining() bool { return s.live.Draining() }

// SIGTERM on ingest: sessions that are up keep sending frames to the worker while new POSTs get
// 503 with Retry-After, and Run returns once the last one has hung up.
func TestDrainKeepsSessionsUntilTheyHangUp(t *testing.T) {
	cfg := testConfig()
	cfg.DrainTimeout = 2 * time.Minute // far beyond the test: only the hang-up may end the drain
	e := startEnv(t, 1, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, sess, stopSending := talking(t, ctx, e)
	stopped := make(chan error, 1)
	go func() { stopped <- e.stopWhip() }()
	eventually(t, 20*time.Second, "the server to drain", e.whip.isDraining)

	_, err := dial(ctx, e.url, tokenGlobex, "pcmu")
	var he *httpError
	if !errors.As(err, &he) || he.code != http.StatusServiceUnavailable || he.retryAfter == "" || !strings.Contains(he.body, "draining") {
		t.Fatalf("POST while draining: %v (want 503 with Retry-After, \"draining\")", err)
	}
	n := len(processed.frames(c.call))
	eventually(t, 20*time.Second, "frames of the session while draining", func() bool { return len(processed.frames(c.call)) >= n+50 })
	select {
	case err := <-stopped:
		t.Fatalf("Run returned (%v) while a session was up", err)
	default:
	}
	if r := sess.endReason(); r != "" {
		t.Fatalf("the session ended (%q) during the drain", r)
	}

	stopSending()
	if code, err := c.hangup(); err != nil || code != http.StatusOK {
		t.Fatalf("DELETE while draining: %d %v", code, err)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after the last session hung up")
	}
	if r := sess.endReason(); r != reasonDelete {
		t.Errorf("session ended with %q, want %q", r, reasonDelete)
	}
	got := processed.frames(c.call)
	for i, f := range got {
		if f.h.Seq != uint32(i) {
			t.Fatalf("frame %d at the worker has sequence %d: the drain lost or reordered frames", i, f.h.Seq)
		}
	}
	if g := processed.gapsOf(c.call); len(g) != 0 {
		t.Fatalf("gaps at the worker: %v", g)
	}
	t.Logf("%d frames in order across the drain", len(got))
}

// Sessions still up when the drain timeout passes are ended, and their calls with them.
func TestDrainTimeoutEndsTheRest(t *testing.T) {
	cfg := testConfig()
	cfg.DrainTimeout = 500 * time.Millisecond
	e := startEnv(t, 1, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, sess, stopSending := talking(t, ctx, e)
	defer c.pc.Close()
	defer stopSending()

	if err := e.stopWhip(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if r := sess.endReason(); r != reasonShutdown {
		t.Errorf("session ended with %q, want %q", r, reasonShutdown)
	}
	eventually(t, 20*time.Second, "ingest to end the call", func() bool { return len(e.stack.Ingest.Calls()) == 0 })
}
