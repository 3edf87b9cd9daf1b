package whip

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
)

func do(t *testing.T, method, url, token, ctype, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	return res, string(b)
}

// offerSDP returns a real audio offer from a pion client (its peer connection is closed).
func offerSDP(t testing.TB, codec string) string {
	t.Helper()
	pc, _, err := newClientPC(codec)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	o, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	gathered := webrtc_gathered(pc)
	if err := pc.SetLocalDescription(o); err != nil {
		t.Fatal(err)
	}
	<-gathered
	return pc.LocalDescription().SDP
}

// TestBadRequests sends each kind of bad request while a call streams, and checks each gets its
// error and the call loses nothing.
func TestBadRequests(t *testing.T) {
	cfg := testConfig()
	cfg.MaxSessions = 6
	cfg.ConnectTimeout = 3 * time.Second
	e := startEnv(t, 1, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	live, err := dial(ctx, e.url, tokenAcme, "pcmu")
	if err != nil {
		t.Fatal(err)
	}
	payloads := pcmuFrames(t, "testdata/speech-pcmu.wav")
	for len(payloads) < 150 { // 3 s, long enough to overlap the bad requests
		payloads = append(payloads, payloads...)
	}
	sent := make(chan error, 1)
	go func() { sent <- live.send(ctx, payloads) }()

	offer := offerSDP(t, "opus")
	videoOnly := "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\na=sendonly\r\n"
	noCodec := strings.ReplaceAll(strings.ReplaceAll(offer, "opus/48000", "G7221/48000"), "PCMU/8000", "X/1")
	for _, tc := range []struct {
		name, method, url, token, ctype, body string
		code                                  int
		says                                  string
	}{
		{"garbage SDP", "POST", e.url, tokenAcme, "application/sdp", "this is not SDP\x00\xff", 400, "not valid SDP"},
		{"offer without audio", "POST", e.url, tokenAcme, "application/sdp", videoOnly, 400, "no audio"},
		{"no accepted codec", "POST", e.url, tokenAcme, "application/sdp", noCodec, 400, "no accepted audio codec"},
		{"huge body", "POST", e.url, tokenAcme, "application/sdp", offer + strings.Repeat("a=x-pad:0123456789\r\n", 4000), 413, "larger than"},
		{"wrong token", "POST", e.url, "not-a-known-token", "application/sdp", offer, 401, "unknown bearer token"},
		{"no token", "POST", e.url, "", "application/sdp", offer, 401, "token required"},
		{"wrong content type", "POST", e.url, tokenAcme, "text/plain", offer, 415, "application/sdp"},
		{"GET endpoint", "GET", e.url, tokenAcme, "", "", 405, "not allowed"},
		{"DELETE unknown session", "DELETE", e.url + "/session/AAAAAAAAAAAAAAAAAAAAAAAA", tokenAcme, "", "", 404, "no such session"},
		{"DELETE with another tenant's token", "DELETE", live.location, tokenGlobex, "", "", 401, "does not own"},
		{"PATCH (trickle)", "PATCH", live.location, tokenAcme, "application/trickle-ice-sdpfrag", "a=candidate:1", 405, "trickle"},
		{"unknown path", "GET", e.url + "/nope", "", "", "", 404, "not found"},
	} {
		res, body := do(t, tc.method, tc.url, tc.token, tc.ctype, tc.body)
		if res.StatusCode != tc.code || !strings.Contains(body, tc.says) {
			t.Errorf("%s: %d %q, want %d %q", tc.name, res.StatusCode, body, tc.code, tc.says)
		}
		if tc.code == 401 && res.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s: no WWW-Authenticate", tc.name)
		}
	}
	res, _ := do(t, "OPTIONS", e.url, "", "", "")
	if res.StatusCode != 204 || res.Header.Get("Access-Control-Allow-Origin") != "*" ||
		!strings.Contains(res.Header.Get("Access-Control-Allow-Headers"), "Authorization") ||
		!strings.Contains(res.Header.Get("Access-Control-Expose-Headers"), "Location") {
		t.Errorf("OPTIONS: %d %v", res.StatusCode, res.Header)
	}

	// A flood of valid POSTs: past the session bound each gets 503 with Retry-After.
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := post(ctx, e.url, tokenGlobex, "application/sdp", offer)
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			mu.Lock()
			codes[res.StatusCode]++
			mu.Unlock()
			if res.StatusCode == 503 && res.Header.Get("Retry-After") == "" {
				t.Error("503 without Retry-After")
			}
		}()
	}
	wg.Wait()
	// The live call holds one slot; a flood session that reaches its connect timeout during the
	// flood (a very slow machine) frees its slot for another, hence "at least".
	if codes[201] < cfg.MaxSessions-1 || codes[503] < 20 || codes[201]+codes[503] != 40 {
		t.Errorf("flood answers %v, want %d (or a few more) × 201 and the rest 503", codes, cfg.MaxSessions-1)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the live call's frames", func() bool { return len(processed.frames(live.call)) >= len(payloads) })
	if _, err := live.hangup(); err != nil {
		t.Fatal(err)
	}
	got := processed.frames(live.call)
	for i, f := range got {
		if f.h.Seq != uint32(i) || f.h.Has(frame.FlagGapFilled) {
			t.Fatalf("live call frame %d: %+v", i, f.h)
		}
	}
	if len(got) != len(payloads) || len(processed.gapsOf(live.call)) != 0 {
		t.Fatalf("live call: %d of %d frames, gaps %v", len(got), len(payloads), processed.gapsOf(live.call))
	}
	// The flood's sessions never connect: they end at the connect timeout and free their slots.
	eventually(t, 10*time.Second, "flood sessions to end", func() bool { return e.whip.Sessions() == 0 })
	t.Logf("flood: %v; live call %d frames complete", codes, len(got))
}

// TestPlacementRefusedIs503 fills the only worker and checks the next call gets 503 with the
// router's Retry-After.
func TestPlacementRefusedIs503(t *testing.T) {
	cfg := testConfig()
	e := startEnvCapacity(t, 1, 1, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	first, err := dial(ctx, e.url, tokenAcme, "pcmu")
	if err != nil {
		t.Fatal(err)
	}
	defer first.hangup()
	_, err = dial(ctx, e.url, tokenAcme, "pcmu")
	var he *httpError
	if !errors.As(err, &he) || he.code != 503 || he.retryAfter == "" {
		t.Fatalf("second call: %v, want 503 with Retry-After", err)
	}
	t.Logf("refused: %v (Retry-After %s)", he, he.retryAfter)
}

// TestSessionEnds checks the ways a session ends: media timeout, ICE failure (the client goes
// away without DELETE), and the server shutting down; each frees its slot.
func TestSessionEnds(t *testing.T) {
	cfg := testConfig()
	cfg.MediaTimeout = 500 * time.Millisecond
	cfg.ICEFailed, cfg.ICEKeepalive = 600*time.Millisecond, 100*time.Millisecond
	e := startEnv(t, 1, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Media timeout: connected, a few frames, then silence without DTX.
	c, err := dial(ctx, e.url, tokenAcme, "pcmu")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.send(ctx, pcmuFrames(t, "testdata/speech-pcmu.wav")[:10]); err != nil {
		t.Fatal(err)
	}
	sess := e.whip.lookup(sessionID(c.location))
	eventually(t, 5*time.Second, "media timeout", func() bool { return sess.endReason() != "" })
	if r := sess.endReason(); r != reasonMediaTimeout {
		t.Errorf("ended with %q, want %q", r, reasonMediaTimeout)
	}
	c.pc.Close()

	// The client closes without DELETE: DTLS close_notify ends the session at once.
	c, err = dial(ctx, e.url, tokenAcme, "opus")
	if err != nil {
		t.Fatal(err)
	}
	sess = e.whip.lookup(sessionID(c.location))
	c.pc.Close()
	eventually(t, 5*time.Second, "session end after the client closed", func() bool { return sess.endReason() != "" })
	if r := sess.endReason(); r != reasonClosed {
		t.Errorf("ended with %q, want %q", r, reasonClosed)
	}

	// ICE failure: the client's network goes away (no close_notify, no consent checks), and its
	// media keeps the media timeout from firing first.
	cfg2 := testConfig()
	cfg2.ICEFailed, cfg2.ICEKeepalive = 400*time.Millisecond, 50*time.Millisecond
	e2 := startEnv(t, 1, cfg2)
	udp, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	plug := &unpluggable{PacketConn: udp}
	c, err = dialOn(ctx, e2.url, tokenAcme, "pcmu", plug)
	if err != nil {
		t.Fatal(err)
	}
	defer c.pc.Close()
	sess = e2.whip.lookup(sessionID(c.location))
	plug.cut.Store(true)
	eventually(t, 5*time.Second, "session end after the client's network went away", func() bool { return sess.endReason() != "" })
	if r := sess.endReason(); r != reasonICEFailed {
		t.Errorf("ended with %q, want %q", r, reasonICEFailed)
	}
	eventually(t, 5*time.Second, "slots freed", func() bool { return e.whip.Sessions() == 0 })
	eventually(t, 5*time.Second, "ingest to drop the calls", func() bool { return len(e.stack.Ingest.Calls()) == 0 })
}

func sessionID(location string) string {
	return location[strings.LastIndex(location, "/")+1:]
}

// TestNoLeaks runs calls through a whole environment and checks that, once it is closed, the
// goroutines are back to where they were.
func TestNoLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Run("calls", func(t *testing.T) {
		e := startEnv(t, 1, testConfig())
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, codec := range []string{"opus", "pcmu"} {
			c, err := dial(ctx, e.url, tokenAcme, codec)
			if err != nil {
				t.Fatal(err)
			}
			if codec == "pcmu" {
				_ = c.send(ctx, pcmuFrames(t, "testdata/speech-pcmu.wav")[:5])
				c.hangup()
			} else {
				c.pc.Close() // left to the server's shutdown
			}
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines before, %d after:\n%s", before, n, buf[:runtime.Stack(buf, true)])
	}
}
