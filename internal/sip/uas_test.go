package sip

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestAnswersWithReasons covers the refusals of offers callrouter cannot serve, and checks that
// the server and stack leave no goroutine behind.
func TestAnswersWithReasons(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<20)
			t.Errorf("%d goroutines left behind (%d before):\n%s", n-before, before, buf[:runtime.Stack(buf, true)])
		}
	})
	e := startEnv(t, 1, nil)
	u := newUAC(t, e.addr)
	cases := []struct {
		name, ctype, body, hdrs, code, contains string
	}{
		{"unsupported body", "text/plain", "hello", "", "415", "Accept: application/sdp"},
		{"bad sdp", "application/sdp", "v=0\r\nm=audio x RTP/AVP 0\r\n", "", "400", "Warning: 399"},
		{"no codec", "application/sdp", "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n", "", "488", "Incompatible media format"},
		{"srtp only", "application/sdp", "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/SAVP 0\r\n", "", "488", ""},
		{"no offer", "", "", "", "488", "SDP offer is required"},
		{"short session timer", "application/sdp", u.offer(), "Session-Expires: 30\r\n", "422", "Min-SE: 90"},
		{"unknown extension", "application/sdp", u.offer(), "Require: 100rel, foo\r\n", "420", "Unsupported: 100rel, foo"},
	}
	for _, c := range cases {
		res := u.request("INVITE", newCallID("refuse"), "", 1, c.hdrs, c.ctype, c.body)
		if codeOf(res) != c.code || !strings.Contains(res, c.contains) {
			t.Errorf("%s: got\n%s\nwant %s with %q", c.name, res, c.code, c.contains)
		}
	}
	if res := u.request("BYE", newCallID("nodialog"), "abc", 2, "", "", ""); codeOf(res) != "481" {
		t.Errorf("BYE outside a dialog: %s", res)
	}
	if res := u.request("OPTIONS", newCallID("opt"), "", 1, "", "", ""); codeOf(res) != "200" || !strings.Contains(res, "Allow: INVITE") {
		t.Errorf("OPTIONS: %s", res)
	}
	if res := u.request("REGISTER", newCallID("reg"), "", 1, "", "", ""); codeOf(res) != "405" {
		t.Errorf("REGISTER: %s", res)
	}
	if e.srv.Calls() != 0 {
		t.Errorf("%d calls after refusals", e.srv.Calls())
	}
}

// TestPlacementRefusedGets503 fills the only worker and checks that the next INVITE gets 503
// with Retry-After, and that a BYE ends the first call.
func TestPlacementRefusedGets503(t *testing.T) {
	e := startEnvW(t, 1, func(wc *workerConfig) { wc.Capacity = 1 }, nil)
	u := newUAC(t, e.addr)
	first := newCallID("first")
	res := u.invite(first, "")
	if codeOf(res) != "200" {
		t.Fatalf("first call: %s", res)
	}
	eventually(t, 5*time.Second, "the worker to report its load", func() bool {
		ws := e.st.Routers[0].Workers()
		return len(ws) == 1 && ws[0].Active == 1
	})
	res = u.request("INVITE", newCallID("second"), "", 1, "", "application/sdp", u.offer())
	if codeOf(res) != "503" || !regexp.MustCompile(`(?m)^Retry-After: \d+`).MatchString(res) {
		t.Errorf("second call: %s", res)
	}
	if res := u.request("BYE", first, toTagRe.FindStringSubmatch(res)[1], 2, "", "", ""); codeOf(res) != "481" {
		t.Errorf("BYE with a wrong tag: %s", res)
	}
	e.srv.mu.Lock()
	var tag string
	for _, c := range e.srv.calls {
		tag, _ = c.dlg.InviteRequest.To().Params.Get("tag")
	}
	e.srv.mu.Unlock()
	if res := u.request("BYE", first, tag, 2, "", "", ""); codeOf(res) != "200" {
		t.Errorf("BYE: %s", res)
	}
	eventually(t, 5*time.Second, "the call to end", func() bool { return e.srv.Calls() == 0 })
}

// TestDigestAuthAndAllowList checks the 401 challenge, a good and a bad answer to it, and the
// source network allow-list.
func TestDigestAuthAndAllowList(t *testing.T) {
	e := startEnv(t, 1, func(c *Config) { c.AuthUsers = map[string]AuthUser{"alice": {Password: "s3cret", Tenant: "default"}} })
	u := newUAC(t, e.addr)
	id := newCallID("auth")
	res := u.request("INVITE", id, "", 1, "", "application/sdp", u.offer())
	if codeOf(res) != "401" {
		t.Fatalf("no challenge: %s", res)
	}
	nonce := regexp.MustCompile(`nonce="([^"]+)"`).FindStringSubmatch(res)[1]
	uri := "sip:svc@" + e.addr
	for _, c := range []struct {
		pass, code string
	}{{"wrong", "401"}, {"s3cret", "200"}} {
		auth := fmt.Sprintf(`Authorization: Digest username="alice", realm="callrouter", nonce="%s", uri="%s", response="%s", algorithm=MD5, qop=auth, nc=00000001, cnonce="abc"`+"\r\n",
			nonce, uri, digestResponse("alice", "callrouter", c.pass, "INVITE", uri, nonce, "abc", 1))
		res := u.request("INVITE", id, "", 2, auth, "application/sdp", u.offer())
		if codeOf(res) != c.code {
			t.Errorf("password %q: %s", c.pass, res)
		}
		if c.code == "200" {
			u.request("ACK", id, toTagRe.FindStringSubmatch(res)[1], 2, "", "", "")
		}
	}

	e2 := startEnv(t, 1, func(c *Config) { c.AllowNets = []string{"10.0.0.0/8"} })
	u2 := newUAC(t, e2.addr)
	if res := u2.request("OPTIONS", newCallID("acl"), "", 1, "", "", ""); codeOf(res) != "403" {
		t.Errorf("OPTIONS from outside the allow-list: %s", res)
	}
	if res := u2.request("INVITE", newCallID("acl"), "", 1, "", "application/sdp", u2.offer()); codeOf(res) != "403" {
		t.Errorf("INVITE from outside the allow-list: %s", res)
	}
}

// TestTenantRuleAndMetadata checks the header tenant rule, the tenant allow-list and the header
// allow-list in call metadata.
func TestTenantRuleAndMetadata(t *testing.T) {
	e := startEnv(t, 1, func(c *Config) {
		c.TenantRule, c.Tenants, c.HeaderMeta = "header:X-Tenant", []string{"acme"}, []string{"X-Customer-Id"}
	})
	u := newUAC(t, e.addr)
	if res := u.invite(newCallID("evil"), "X-Tenant: evil\r\n"); codeOf(res) != "403" {
		t.Errorf("unknown tenant: %s", res)
	}
	id := newCallID("acme")
	if res := u.invite(id, "X-Tenant: acme\r\nX-Customer-Id: 42\r\nX-Secret: no\r\n"); codeOf(res) != "200" {
		t.Fatalf("acme call: %s", res)
	}
	eventually(t, 5*time.Second, "a start event", func() bool { return len(e.events.of("start")) == 1 })
	ev := e.events.of("start")[0]
	var sd struct {
		Meta map[string]string `json:"meta"`
	}
	_ = json.Unmarshal(ev.Data, &sd)
	if ev.Tenant != "acme" || sd.Meta["sip.h.x-customer-id"] != "42" || sd.Meta["sip.h.x-secret"] != "" ||
		sd.Meta["sip.call_id"] != id || sd.Meta["caller"] != "alice" || sd.Meta["sip.from_name"] != "Test" {
		t.Errorf("tenant %q meta %v", ev.Tenant, sd.Meta)
	}
}

// TestRTPSourceCheckAndInactivity sends RTP from the wrong port (dropped and counted), then from
// the negotiated one, then stops: the server hangs up with BYE after the RTP timeout.
func TestRTPSourceCheckAndInactivity(t *testing.T) {
	e := startEnv(t, 1, func(c *Config) { c.RTPTimeout = time.Second })
	u := newUAC(t, e.addr)
	id := newCallID("rtp")
	res := u.invite(id, "")
	if codeOf(res) != "200" {
		t.Fatalf("call: %s", res)
	}
	port := 0
	fmt.Sscan(mPortRe.FindStringSubmatch(res)[1], &port)
	stray, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer stray.Close()
	sendRTP(t, stray, port, 10, 100, 0)
	sendRTP(t, u.rtp, port, 25, 200, 0)
	if !u.awaitBye(id, 10*time.Second) {
		t.Fatal("no BYE after the RTP timeout")
	}
	eventually(t, 5*time.Second, "the call to end", func() bool { return e.srv.Calls() == 0 })
	if n := testutil.ToFloat64(e.srv.m.rtpDropped.WithLabelValues("source")); n != 10 {
		t.Errorf("%v packets dropped for their source, want 10", n)
	}
	if n := testutil.ToFloat64(e.srv.m.ended.WithLabelValues("rtp_timeout")); n != 1 {
		t.Errorf("rtp_timeout ends %v, want 1", n)
	}
	eventually(t, 5*time.Second, "the worker to stop the call", func() bool { return len(callKeys()) == 1 })
	l := rec.snapshot(callKeys()[0] + "/0")
	real := len(l.seqs) - l.gapFilled
	if real != 25 || l.payload[0] != 0x11 || l.codec.String() != "pcmu" {
		t.Errorf("%d real frames (want 25 from the negotiated source), codec %v", real, l.codec)
	}
}

// TestSessionExpiry lets a session timer run out without a refresh: the server sends BYE.
func TestSessionExpiry(t *testing.T) {
	e := startEnv(t, 1, func(c *Config) { c.MinSessionExpires = time.Second })
	u := newUAC(t, e.addr)
	id := newCallID("timer")
	res := u.invite(id, "Session-Expires: 2;refresher=uac\r\nSupported: timer\r\n")
	if codeOf(res) != "200" || !strings.Contains(res, "Session-Expires: 2;refresher=uac") {
		t.Fatalf("call: %s", res)
	}
	if !u.awaitBye(id, 6*time.Second) {
		t.Fatal("no BYE after the session expired")
	}
	eventually(t, 5*time.Second, "the call to end", func() bool {
		return testutil.ToFloat64(e.srv.m.ended.WithLabelValues("session_expired")) == 1
	})
}

// TestPortQuarantine checks that a released port waits out its quarantine.
func TestPortQuarantine(t *testing.T) {
	lo, _ := freeRange(t, 0)
	p := newPortPool(netipLoopback, lo, lo+3, time.Hour) // two ports: lo, lo+2
	now := time.Unix(1000, 0)
	p.now = func() time.Time { return now }
	a, err := p.open()
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.open()
	if err != nil {
		t.Fatal(err)
	}
	pa := a.LocalAddr().(*net.UDPAddr).Port
	p.release(a)
	if _, err := p.open(); err != ErrNoPorts {
		t.Fatalf("open during quarantine: %v", err)
	}
	now = now.Add(time.Hour)
	c, err := p.open()
	if err != nil || c.LocalAddr().(*net.UDPAddr).Port != pa {
		t.Fatalf("after quarantine: %v", err)
	}
	p.release(b)
	p.release(c)
	if used, free := p.stats(); used != 0 || free != 2 {
		t.Errorf("stats %d used %d free", used, free)
	}
}

// TestG722 answers a G.722-only offer and carries the leg as G.722 at 16 kHz.
func TestG722(t *testing.T) {
	e := startEnv(t, 1, nil)
	u := newUAC(t, e.addr)
	id := newCallID("g722")
	offer := fmt.Sprintf("v=0\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio %d RTP/AVP 9\r\na=rtpmap:9 G722/8000\r\n", u.rtpPort())
	res := u.request("INVITE", id, "", 1, "", "application/sdp", offer)
	if codeOf(res) != "200" || !strings.Contains(res, "a=rtpmap:9 G722/8000") {
		t.Fatalf("G.722 offer: %s", res)
	}
	eventually(t, 5*time.Second, "a start event", func() bool { return len(e.events.of("start")) == 1 })
	if d := string(e.events.of("start")[0].Data); !strings.Contains(d, `"codec":"g722"`) || !strings.Contains(d, `"rate":16000`) {
		t.Errorf("start event legs: %s", d)
	}
	u.request("ACK", id, toTagRe.FindStringSubmatch(res)[1], 1, "", "", "")
}

// TestCancelDuringPlacement cancels an INVITE while its placement waits for a router that is
// gone: the CANCEL gets 200, the INVITE 487, and no call or RTP port is left behind.
func TestCancelDuringPlacement(t *testing.T) {
	e := startEnv(t, 1, nil)
	e.st.Stop(e.st.Routers[0])
	// Stop only cancels the router: wait until it no longer answers placements, or the INVITE
	// can still be placed (200) before the CANCEL.
	nc, err := nats.Connect(e.st.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	eventually(t, 10*time.Second, "the stopped router to leave router.place", func() bool {
		_, err := nc.Request(subjects.Place, []byte("{}"), time.Second)
		return errors.Is(err, nats.ErrNoResponders)
	})
	u := newUAC(t, e.addr)
	id := newCallID("cancel")
	branch := "z9hG4bKcancel" + id[:12]
	head := func(method string) string {
		return fmt.Sprintf("%s sip:svc@%s SIP/2.0\r\nVia: SIP/2.0/UDP %s;rport;branch=%s\r\nFrom: <sip:alice@127.0.0.1>;tag=c1\r\n"+
			"To: <sip:svc@%s>\r\nCall-ID: %s\r\nCSeq: 1 %s\r\nContact: <sip:alice@%s>\r\nMax-Forwards: 70\r\n",
			method, e.addr, u.local(), branch, e.addr, id, method, u.local())
	}
	body := u.offer()
	invite := head("INVITE") + "Content-Type: application/sdp\r\nContent-Length: " + fmt.Sprint(len(body)) + "\r\n\r\n" + body
	if _, err := u.conn.WriteToUDP([]byte(invite), u.dst); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	deadline := time.After(10 * time.Second)
	sentCancel := false
	for got["INVITE"] == "" || got["CANCEL"] == "" {
		select {
		case m := <-u.in:
			cseq := headerRe("CSeq").FindStringSubmatch(m)
			if cseq == nil {
				continue
			}
			method := strings.Fields(cseq[1])[1]
			if strings.HasPrefix(m, "SIP/2.0 100") && method == "INVITE" && !sentCancel {
				sentCancel = true
				if _, err := u.conn.WriteToUDP([]byte(head("CANCEL")+"Content-Length: 0\r\n\r\n"), u.dst); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if !strings.HasPrefix(m, "SIP/2.0 1") {
				got[method] = codeOf(m)
			}
		case <-deadline:
			t.Fatalf("responses so far %v", got)
		}
	}
	if got["CANCEL"] != "200" || got["INVITE"] != "487" {
		t.Errorf("CANCEL %s, INVITE %s; want 200 and 487", got["CANCEL"], got["INVITE"])
	}
	eventually(t, 10*time.Second, "ports and calls released", func() bool {
		used, _ := e.srv.ports.stats()
		return used == 0 && e.srv.Calls() == 0 && len(e.st.Ingest.Calls()) == 0
	})
}

// TestInfoDTMF sends DTMF as SIP INFO in both body formats.
func TestInfoDTMF(t *testing.T) {
	e := startEnv(t, 1, nil)
	u := newUAC(t, e.addr)
	id := newCallID("info")
	res := u.invite(id, "")
	if codeOf(res) != "200" {
		t.Fatalf("call: %s", res)
	}
	tag := toTagRe.FindStringSubmatch(res)[1]
	if r := u.request("INFO", id, tag, 2, "", "application/dtmf-relay", "Signal=#\r\nDuration=250\r\n"); codeOf(r) != "200" {
		t.Errorf("INFO dtmf-relay: %s", r)
	}
	if r := u.request("INFO", id, tag, 3, "", "application/dtmf", "7"); codeOf(r) != "200" {
		t.Errorf("INFO dtmf: %s", r)
	}
	if r := u.request("INFO", id, tag, 4, "", "application/dtmf-relay", "Signal=x\r\n"); codeOf(r) != "400" {
		t.Errorf("INFO without a signal: %s", r)
	}
	if r := u.request("INFO", id, tag, 5, "", "text/plain", "hi"); codeOf(r) != "415" {
		t.Errorf("INFO of another type: %s", r)
	}
	eventually(t, 5*time.Second, "two dtmf events", func() bool { return len(e.events.of("dtmf")) == 2 })
	var got []string
	for _, ev := range e.events.of("dtmf") {
		var d dtmfData
		_ = json.Unmarshal(ev.Data, &d)
		got = append(got, fmt.Sprintf("%s/%d/%s", d.Digit, d.DurationMS, d.Via))
	}
	if strings.Join(got, " ") != "#/250/info 7/0/info" {
		t.Errorf("events %v", got)
	}
}
