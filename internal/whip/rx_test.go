package whip

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/guard"
	"github.com/pion/stun/v4"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestOfferWithOtherSections offers audio next to a data channel in one BUNDLE group: the answer
// rejects the other section (port 0), keeps the audio one, and the call's every frame arrives.
func TestOfferWithOtherSections(t *testing.T) {
	e := startEnv(t, 1, testConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pc, track, err := newClientPC("pcmu")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pc.CreateDataChannel("chat", nil); err != nil {
		t.Fatal(err)
	}
	c, err := dialPC(ctx, e.url, tokenAcme, pc, track, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(c.answer, "\r\nm=application 0 ") || !strings.Contains(c.answer, "a=group:BUNDLE 0\r\n") || !strings.Contains(c.answer, "a=ice-lite") {
		t.Fatalf("answer:\n%s", c.answer)
	}
	frames := pcmuFrames(t, "testdata/speech-pcmu.wav")[:50]
	if err := c.send(ctx, frames); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "every frame at the worker", func() bool { return len(processed.frames(c.call)) >= len(frames) })
	if code, err := c.hangup(); err != nil || code != 200 {
		t.Fatalf("DELETE: %d %v", code, err)
	}
	checkComplete(t, c.call, len(frames))
}

// checkComplete checks that the worker has exactly n frames of call, in order, none filled.
func checkComplete(t *testing.T, call string, n int) {
	t.Helper()
	got := processed.frames(call)
	for i, f := range got {
		if f.h.Seq != uint32(i) || f.h.Has(frame.FlagGapFilled) {
			t.Fatalf("frame %d: %+v", i, f.h)
		}
	}
	if len(got) != n || len(processed.gapsOf(call)) != 0 {
		t.Fatalf("%d frames of %d, gaps %v", len(got), n, processed.gapsOf(call))
	}
}

// TestWrongFingerprintFailsDTLS offers the client's ICE credentials with another certificate's
// fingerprint, as a man in the middle of the signalling would: the client's DTLS handshake is
// refused, the session ends with dtls_failed and never connects.
func TestWrongFingerprintFailsDTLS(t *testing.T) {
	e := startEnv(t, 1, testConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pc, track, err := newClientPC("pcmu")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	fp := regexp.MustCompile(`(a=fingerprint:sha-256 )([0-9A-F]{2})`)
	edit := func(sdp string) string {
		return fp.ReplaceAllStringFunc(sdp, func(m string) string {
			if strings.HasSuffix(m, "00") {
				return m[:len(m)-2] + "01"
			}
			return m[:len(m)-2] + "00"
		})
	}
	dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
	defer dcancel()
	c, err := dialPC(dctx, e.url, tokenAcme, pc, track, edit)
	if err == nil {
		t.Fatalf("connected with a forged fingerprint: %s", c.location)
	}
	var sess *session
	for _, s := range e.whip.allSessions() {
		sess = s
	}
	if sess == nil {
		t.Fatalf("no session (dial: %v)", err)
	}
	eventually(t, 15*time.Second, "the session to end", func() bool { return sess.endReason() != "" })
	if r := sess.endReason(); r != reasonDTLSFailed {
		t.Fatalf("ended with %q, want %q", r, reasonDTLSFailed)
	}
}

// TestForgedPacketsIgnored sends a live session's shared port, from another address, a binding
// request for its ufrag signed with a wrong password, and SRTP and DTLS records: none is
// answered or taken (the address never becomes the session's), and the call keeps every frame.
func TestForgedPacketsIgnored(t *testing.T) {
	e := startEnv(t, 1, testConfig())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := dial(ctx, e.url, tokenAcme, "pcmu")
	if err != nil {
		t.Fatal(err)
	}
	sess := e.whip.lookup(sessionID(c.location))
	frames := pcmuFrames(t, "testdata/speech-pcmu.wav")
	sent := make(chan error, 1)
	go func() { sent <- c.send(ctx, frames) }()

	udp, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	to := e.whip.UDPAddr()
	req, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.NewUsername(sess.t.local.ufrag+":evil"),
		stun.RawAttribute{Type: stun.AttrUseCandidate}, stun.NewShortTermIntegrity("not-the-password-0123456"), stun.Fingerprint)
	if err != nil {
		t.Fatal(err)
	}
	rtpLike := append([]byte{0x80, 0x00, 0x00, 0x01, 0, 0, 0, 1, 0, 0, 0, 2}, make([]byte, 172)...)
	dtlsLike := append([]byte{22, 0xfe, 0xfd}, make([]byte, 60)...)
	for i := 0; i < 20; i++ {
		for _, p := range [][]byte{req.Raw, rtpLike, dtlsLike} {
			if _, err := udp.WriteTo(p, to); err != nil {
				t.Fatal(err)
			}
		}
	}
	_ = udp.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 1500)
	if n, _, err := udp.ReadFrom(buf); !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
		t.Fatalf("the forged request was answered (%d bytes, %v)", n, err)
	}
	from := netip.MustParseAddrPort(udp.LocalAddr().String())
	if got := e.whip.sessionAt(from); got != nil {
		t.Fatal("the forger's address was taken as the session's")
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "every frame at the worker", func() bool { return len(processed.frames(c.call)) >= len(frames) })
	if code, err := c.hangup(); err != nil || code != 200 {
		t.Fatalf("DELETE: %d %v", code, err)
	}
	checkComplete(t, c.call, len(frames))
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// FuzzDatagram feeds arbitrary datagrams to the shared socket's demultiplexer, from an address
// a session has checked from (seeded with a valid binding request) and from one it has not:
// nothing panics, even recovered.
func FuzzDatagram(f *testing.F) {
	cfg := testConfig()
	cfg.ConnectTimeout = 2 * time.Second
	e := startEnv(f, 1, cfg)
	res, body := doOn(f, e.url, offerSDP(f, "pcmu"))
	if res != 201 {
		f.Fatalf("POST: %d %s", res, body)
	}
	var sess *session
	for _, s := range e.whip.allSessions() {
		sess = s
	}
	valid, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.NewUsername(sess.t.local.ufrag+":peer"),
		stun.RawAttribute{Type: stun.AttrUseCandidate}, stun.NewShortTermIntegrity(sess.t.local.pwd), stun.Fingerprint)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid.Raw, true)
	f.Add(append([]byte{0x80, 111, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2}, make([]byte, 40)...), true)
	f.Add([]byte{0x80, 200, 0, 1}, false)
	f.Add(append([]byte{22, 0xfe, 0xfd, 0, 0}, make([]byte, 20)...), true)
	f.Add([]byte{}, false)
	peer, other := netip.MustParseAddrPort("127.0.0.9:5000"), netip.MustParseAddrPort("127.0.0.10:5000")
	var m stun.Message
	e.whip.datagram(valid.Raw, peer, &m)
	panics := func() float64 {
		sum := 0.0
		for _, w := range []string{"whip_track", "whip_session", "whip_callback"} {
			sum += testutil.ToFloat64(guard.Panics.WithLabelValues(w))
		}
		return sum
	}
	p0 := panics()
	f.Fuzz(func(t *testing.T, b []byte, checked bool) {
		from := other
		if checked {
			from = peer
		}
		e.whip.datagram(b, from, &m)
		if p := panics(); p != p0 {
			t.Fatalf("%v panics recovered", p-p0)
		}
	})
}

// doOn POSTs an offer with the acme token and returns the status and body.
func doOn(t testing.TB, url, offer string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := post(ctx, url, tokenAcme, "application/sdp", offer)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b := make([]byte, 64<<10)
	n, _ := res.Body.Read(b)
	return res.StatusCode, string(b[:n])
}

// TestFirstCheckIsCheckedBack: the peer's first check without USE-CANDIDATE is answered and then
// checked back at once, not a keepalive (ICEKeepalive, 10 s here) later: a controlling agent
// nominates a pair that has succeeded when the other side checks it (pion at once, otherwise at
// its next check, 200 ms later), which took a pion client's setup from about 10 to about 210 ms.
func TestFirstCheckIsCheckedBack(t *testing.T) {
	cfg := testConfig()
	cfg.ICEKeepalive, cfg.ICEFailed, cfg.MediaTimeout = 10*time.Second, 40*time.Second, 40*time.Second
	e := startEnv(t, 1, cfg)
	if res, body := doOn(t, e.url, offerSDP(t, "pcmu")); res != 201 {
		t.Fatalf("POST: %d %s", res, body)
	}
	var sess *session
	for _, s := range e.whip.allSessions() {
		sess = s
	}
	udp, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	req, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.NewUsername(sess.t.local.ufrag+":"+sess.t.remote.ufrag),
		stun.NewShortTermIntegrity(sess.t.local.pwd), stun.Fingerprint)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := udp.WriteTo(req.Raw, e.whip.UDPAddr()); err != nil {
		t.Fatal(err)
	}
	var answered, checked bool
	buf := make([]byte, 1500)
	_ = udp.SetReadDeadline(time.Now().Add(3 * time.Second))
	for !answered || !checked {
		n, _, err := udp.ReadFrom(buf)
		if err != nil {
			t.Fatalf("answered %v, checked back %v within 3 s (the keepalive is 10 s): %v", answered, checked, err)
		}
		m := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
		if m.Decode() != nil {
			continue
		}
		switch m.Type {
		case stun.BindingSuccess:
			answered = true
		case stun.BindingRequest:
			if !answered {
				t.Fatal("checked back before the check was answered")
			}
			checked = true
		}
	}
}
