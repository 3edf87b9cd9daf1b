package proc

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/coder/websocket"
	"go.uber.org/goleak"
)

// TestForkEndsWithItsCall: a fork whose receiver upgrades and then never answers open (a hung
// vendor) keeps retrying while the call is up, but once the call stops it gives up within the
// stop grace: no goroutine of it (nor a connection of it) outlives the call by more than that.
// Before, the retries went on with the default options for up to ~100 s (10 attempts of a 5 s
// open timeout plus the backoff) after the call had ended.
func TestForkEndsWithItsCall(t *testing.T) {
	before := goleak.IgnoreCurrent()
	var mu sync.Mutex
	var conns []*websocket.Conn
	hung := make(chan struct{})
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
		<-hung // read nothing, answer nothing
		c.CloseNow()
	}))
	targets := filepath.Join(t.TempDir(), "targets")
	if err := os.WriteFile(targets, []byte("acme ws"+strings.TrimPrefix(hs.URL, "http")+"/ah key -\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := newFork(Options{"targets": targets}) // the default reconnect options
	if err != nil {
		t.Fatal(err)
	}
	fc := newFakeCall(&filesrc.Recording{Codec: frame.CodecPCMU, Rate: 8000, Frames: make([][][]byte, 2)}, "hung")
	hd, err := p.Start(fc)
	if err != nil {
		t.Fatal(err)
	}
	h := hd.(*forkCall)
	for seq := uint32(0); seq < 10; seq++ {
		forkFeed(h, 0, seq)
		forkFeed(h, 1, seq)
	}
	waitFor(t, "the fork to connect", func() bool { mu.Lock(); defer mu.Unlock(); return len(conns) > 0 })
	stopped := time.Now()
	h.Stop(StopEnd)
	select {
	case <-h.done:
	case <-time.After(forkStopGrace + 5*time.Second):
		t.Fatalf("the fork still runs %v after its call stopped", time.Since(stopped).Round(time.Second))
	}
	if d := time.Since(stopped); d > forkStopGrace+2*time.Second {
		t.Errorf("the fork ended %v after its call, want at most the grace %v and a little", d.Round(100*time.Millisecond), forkStopGrace)
	}
	if f := forkState(fc, "failed"); len(f) != 1 || !strings.Contains(f[0]["why"].(string), "call ended") {
		t.Errorf("failed events %v, want one saying the call ended", f)
	}
	close(hung)
	hs.Close()
	goleak.VerifyNone(t, before)
}
