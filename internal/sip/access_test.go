package sip

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// tcpUAC is a SIP client on one TCP connection from a chosen loopback address.
type tcpUAC struct {
	t    testing.TB
	conn net.Conn
	dst  string
	in   chan string
}

func newTCPUAC(t testing.TB, dst string, ip net.IP) *tcpUAC {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", dst)
	if err != nil {
		t.Fatal(err)
	}
	u := &tcpUAC{t: t, conn: c, dst: dst, in: make(chan string, 64)}
	go readSIPStream(c, u.in)
	t.Cleanup(func() { c.Close() })
	return u
}

// readSIPStream frames SIP messages from a stream onto in until the stream ends.
func readSIPStream(c io.Reader, in chan<- string) {
	defer close(in)
	br := bufio.NewReader(c)
	for {
		var head strings.Builder
		cl := 0
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if line == "\r\n" && head.Len() == 0 {
				continue // keep-alive
			}
			head.WriteString(line)
			if line == "\r\n" {
				break
			}
			if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(strings.TrimSpace(k), "Content-Length") {
				cl, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		body := make([]byte, cl)
		if _, err := io.ReadFull(br, body); err != nil {
			return
		}
		in <- head.String() + string(body)
	}
}

func (u *tcpUAC) request(method, callID, toTag string, cseq int, hdrs, ctype, body string) string {
	u.t.Helper()
	msg := sipMessage(method, u.dst, "TCP", u.conn.LocalAddr().String(), "z9hG4bKtcp"+strconv.FormatInt(time.Now().UnixNano(), 10),
		callID, toTag, cseq, hdrs, ctype, body)
	if _, err := u.conn.Write([]byte(msg)); err != nil {
		u.t.Fatal(err)
	}
	if method == "ACK" {
		return ""
	}
	return awaitFinal(u.t, u.in, callID, method)
}

// awaitFinal returns the next final response to method for callID from in.
func awaitFinal(t testing.TB, in <-chan string, callID, method string) string {
	t.Helper()
	cseq := regexp.MustCompile(`(?m)^CSeq: *\d+ ` + method + `\r?$`)
	timeout := time.After(15 * time.Second)
	for {
		select {
		case m, ok := <-in:
			if !ok {
				t.Fatalf("connection closed before the response to %s %s", method, callID)
			}
			if strings.HasPrefix(m, "SIP/2.0 ") && !strings.HasPrefix(m, "SIP/2.0 1") && strings.Contains(m, callID) && cseq.MatchString(m) {
				return m
			}
		case <-timeout:
			t.Fatalf("no final response to %s %s", method, callID)
		}
	}
}

var attackerIP = net.IPv4(127, 0, 0, 2)

// forbidden returns callrouter_sip_forbidden_total{reason}.
func (e *env) forbidden(reason string) float64 {
	return testutil.ToFloat64(e.srv.m.forbidden.WithLabelValues(reason))
}

// TestForgedInDialogRequestsOverUDP places a call over UDP and sends, with the dialog's Call-ID
// and tags, a BYE, a re-INVITE moving the media, an INFO with a digit and an UPDATE from
// another host, and a BYE from another port of the caller's host: each gets 403 and is counted;
// the call keeps every frame from the caller, publishes no digit, and ends on the caller's BYE.
func TestForgedInDialogRequestsOverUDP(t *testing.T) {
	e := startEnv(t, 1, nil)
	u := newUAC(t, e.addr)
	id := newCallID("forge")
	res := u.invite(id, "")
	if codeOf(res) != "200" {
		t.Fatalf("call: %s", res)
	}
	tag := toTagRe.FindStringSubmatch(res)[1]
	port, _ := strconv.Atoi(mPortRe.FindStringSubmatch(res)[1])
	sent := make(chan struct{})
	go func() { defer close(sent); sendRTP(t, u.rtp, port, 50, 100, 0) }()

	evil := newUACAt(t, e.addr, attackerIP)
	sameHost := newUAC(t, e.addr)
	forged := []struct {
		who                 *uac
		method, ctype, body string
	}{
		{evil, "BYE", "", ""},
		{evil, "INVITE", "application/sdp", evil.offer()},
		{evil, "INFO", "application/dtmf-relay", "Signal=5\r\nDuration=160\r\n"},
		{evil, "UPDATE", "", ""},
		{sameHost, "BYE", "", ""},
	}
	for i, f := range forged {
		if res := f.who.request(f.method, id, tag, 10+i, "", f.ctype, f.body); codeOf(res) != "403" {
			t.Errorf("forged %s from %s: %s", f.method, f.who.local(), res)
		}
	}
	if n := e.forbidden("dialog_source"); n != float64(len(forged)) {
		t.Errorf("forbidden{dialog_source} = %v, want %d", n, len(forged))
	}
	if e.srv.Calls() != 1 {
		t.Fatal("a forged request ended the call")
	}
	<-sent
	if res := u.request("BYE", id, tag, 20, "", "", ""); codeOf(res) != "200" {
		t.Fatalf("caller's BYE: %s", res)
	}
	eventually(t, 10*time.Second, "the worker to stop the call", func() bool { return len(callKeys()) == 1 })
	l := rec.snapshot(callKeys()[0] + "/0")
	if real := len(l.seqs) - l.gapFilled; real != 50 {
		t.Errorf("%d real frames, want the caller's 50", real)
	}
	if n := len(e.events.of("dtmf")); n != 0 {
		t.Errorf("%d dtmf events from a forged INFO", n)
	}
	if got := testutil.ToFloat64(e.srv.m.rtpDropped.WithLabelValues("source")); got != 0 {
		t.Errorf("%v RTP packets dropped for their source: the forged re-INVITE moved the media", got)
	}
}

// TestForgedInDialogRequestsOverTCP places a call over TCP; a BYE on another connection from
// another host, and one over UDP from the caller's host (another transport), get 403; the
// caller's BYE on its connection ends the call.
func TestForgedInDialogRequestsOverTCP(t *testing.T) {
	e := startEnv(t, 1, nil)
	u := newUAC(t, e.addr) // for its RTP socket and offer
	caller := newTCPUAC(t, e.addr, net.IPv4(127, 0, 0, 1))
	id := newCallID("forgetcp")
	res := caller.request("INVITE", id, "", 1, "", "application/sdp", u.offer())
	if codeOf(res) != "200" {
		t.Fatalf("call: %s", res)
	}
	tag := toTagRe.FindStringSubmatch(res)[1]
	caller.request("ACK", id, tag, 1, "", "", "")
	evil := newTCPUAC(t, e.addr, attackerIP)
	if res := evil.request("BYE", id, tag, 2, "", "", ""); codeOf(res) != "403" {
		t.Errorf("BYE over TCP from another host: %s", res)
	}
	if res := u.request("BYE", id, tag, 3, "", "", ""); codeOf(res) != "403" {
		t.Errorf("BYE over UDP from the caller's host: %s", res)
	}
	if n := e.forbidden("dialog_source"); n != 2 || e.srv.Calls() != 1 {
		t.Fatalf("forbidden{dialog_source} = %v, %d calls: want 2 and the call up", n, e.srv.Calls())
	}
	if res := caller.request("BYE", id, tag, 4, "", "", ""); codeOf(res) != "200" {
		t.Errorf("caller's BYE: %s", res)
	}
	eventually(t, 5*time.Second, "the call to end", func() bool { return e.srv.Calls() == 0 })
}

// TestForgedCancelRefused holds an INVITE in placement while a CANCEL with its Via, Call-ID,
// From and CSeq comes from another host: the CANCEL gets 403 and the call is answered. A CANCEL
// from the caller still cancels.
func TestForgedCancelRefused(t *testing.T) {
	e := startEnv(t, 1, nil)
	entered, release := make(chan struct{}), make(chan struct{})
	hook := func(req *sip.Request) {
		if req.IsInvite() && strings.HasPrefix(req.CallID().Value(), "held") {
			entered <- struct{}{}
			<-release
		}
	}
	e.srv.handlerHook.Store(&hook)
	u := newUAC(t, e.addr)
	evil := newUACAt(t, e.addr, attackerIP)
	for _, c := range []struct {
		name   string
		from   *uac
		cancel string // response to the CANCEL
		invite string // final response to the INVITE
	}{{"forged", evil, "403", "200"}, {"caller's", u, "200", "487"}} {
		id := newCallID("held")
		branch := "z9hG4bKheld" + strconv.FormatInt(time.Now().UnixNano(), 10)
		u.send(sipMessage("INVITE", e.addr, "UDP", u.local(), branch, id, "", 1, "", "application/sdp", u.offer()))
		select {
		case <-entered:
		case <-time.After(10 * time.Second):
			t.Fatal("the INVITE never reached its handler")
		}
		// The CANCEL repeats the INVITE's Via, as RFC 3261 section 9.1 asks: only its source
		// differs. Its Via has rport, so every answer goes to its source.
		msg := sipMessage("CANCEL", e.addr, "UDP", u.local(), branch, id, "", 1, "", "", "")
		if _, err := c.from.conn.WriteToUDP([]byte(msg), c.from.dst); err != nil {
			t.Fatal(err)
		}
		if res := c.from.await(id, "CANCEL"); codeOf(res) != c.cancel {
			t.Errorf("%s CANCEL: %s", c.name, res)
		}
		release <- struct{}{}
		if res := u.await(id, "INVITE"); codeOf(res) != c.invite {
			t.Errorf("INVITE after the %s CANCEL: %s", c.name, res)
		} else if c.invite == "200" {
			u.request("ACK", id, toTagRe.FindStringSubmatch(res)[1], 1, "", "", "")
			u.request("BYE", id, toTagRe.FindStringSubmatch(res)[1], 2, "", "", "")
		}
	}
	if n := e.forbidden("cancel_source"); n != 1 {
		t.Errorf("forbidden{cancel_source} = %v, want 1", n)
	}
}

// TestDigestUserTenant gives each digest user one tenant: alice (acme) calling for globex gets
// 403; for acme she gets 200. With the auth tenant rule the call takes the user's tenant. In
// the dialog, a BYE without credentials is challenged, one with bob's valid credentials gets
// 403, and one with alice's ends the call.
func TestDigestUserTenant(t *testing.T) {
	users := map[string]AuthUser{"alice": {Password: "s3cret", Tenant: "acme"}, "bob": {Password: "b0b", Tenant: "globex"}}
	e := startEnv(t, 1, func(c *Config) { c.AuthUsers, c.TenantRule = users, "header:X-Tenant" })
	u := newUAC(t, e.addr)
	uri := "sip:svc@" + e.addr
	authFor := func(user, method, nonce string) string {
		return fmt.Sprintf(`Authorization: Digest username="%s", realm="callrouter", nonce="%s", uri="%s", response="%s", algorithm=MD5, qop=auth, nc=00000001, cnonce="c1"`+"\r\n",
			user, nonce, uri, digestResponse(user, "callrouter", users[user].Password, method, uri, nonce, "c1", 1))
	}
	nonceOf := func(res string) string { return regexp.MustCompile(`nonce="([^"]+)"`).FindStringSubmatch(res)[1] }
	id := newCallID("tenant")
	res := u.request("INVITE", id, "", 1, "X-Tenant: globex\r\n", "application/sdp", u.offer())
	nonce := nonceOf(res)
	if res := u.request("INVITE", id, "", 2, "X-Tenant: globex\r\n"+authFor("alice", "INVITE", nonce), "application/sdp", u.offer()); codeOf(res) != "403" ||
		!strings.Contains(res, "tenant not allowed for this user") {
		t.Errorf("alice calling for globex: %s", res)
	}
	if n := e.forbidden("user_tenant"); n != 1 {
		t.Errorf("forbidden{user_tenant} = %v, want 1", n)
	}
	res = u.request("INVITE", id, "", 3, "X-Tenant: acme\r\n"+authFor("alice", "INVITE", nonce), "application/sdp", u.offer())
	if codeOf(res) != "200" {
		t.Fatalf("alice calling for acme: %s", res)
	}
	tag := toTagRe.FindStringSubmatch(res)[1]
	u.request("ACK", id, tag, 3, "", "", "")
	eventually(t, 5*time.Second, "the start event", func() bool { return len(e.events.of("start")) == 1 })
	if tn := e.events.of("start")[0].Tenant; tn != "acme" {
		t.Errorf("call tenant %q, want acme", tn)
	}
	if res := u.request("BYE", id, tag, 4, "", "", ""); codeOf(res) != "401" {
		t.Errorf("BYE without credentials: %s", res)
	}
	if res := u.request("BYE", id, tag, 5, authFor("bob", "BYE", nonce), "", ""); codeOf(res) != "403" {
		t.Errorf("BYE with bob's credentials: %s", res)
	}
	if n := e.forbidden("dialog_user"); n != 1 || e.srv.Calls() != 1 {
		t.Fatalf("forbidden{dialog_user} = %v, %d calls: want 1 and the call up", n, e.srv.Calls())
	}
	if res := u.request("BYE", id, tag, 6, authFor("alice", "BYE", nonce), "", ""); codeOf(res) != "200" {
		t.Errorf("BYE with alice's credentials: %s", res)
	}
	eventually(t, 5*time.Second, "the call to end", func() bool { return e.srv.Calls() == 0 })

	// The auth rule: the tenant is the user's, whatever the request says.
	e2 := startEnv(t, 1, func(c *Config) { c.AuthUsers, c.TenantRule = users, "auth" })
	u2 := newUAC(t, e2.addr)
	id = newCallID("authrule")
	nonce = nonceOf(u2.request("INVITE", id, "", 1, "", "application/sdp", u2.offer()))
	uri = "sip:svc@" + e2.addr
	res = u2.request("INVITE", id, "", 2, "X-Tenant: acme\r\n"+authFor("bob", "INVITE", nonce), "application/sdp", u2.offer())
	if codeOf(res) != "200" {
		t.Fatalf("bob's call: %s", res)
	}
	u2.request("ACK", id, toTagRe.FindStringSubmatch(res)[1], 2, "", "", "")
	eventually(t, 5*time.Second, "the start event", func() bool { return len(e2.events.of("start")) == 1 })
	if tn := e2.events.of("start")[0].Tenant; tn != "globex" {
		t.Errorf("call tenant %q under the auth rule, want bob's globex", tn)
	}
}

// TestAllowListCoversEveryRequest puts only 127.0.0.1 on the allow-list: a BYE, OPTIONS and
// INVITE from 127.0.0.2 get 403 from the transport guard, and the call goes on.
func TestAllowListCoversEveryRequest(t *testing.T) {
	e := startEnv(t, 1, func(c *Config) { c.AllowNets = []string{"127.0.0.1/32"} })
	u := newUAC(t, e.addr)
	id := newCallID("allow")
	res := u.invite(id, "")
	if codeOf(res) != "200" {
		t.Fatalf("call from the allow-list: %s", res)
	}
	tag := toTagRe.FindStringSubmatch(res)[1]
	evil := newUACAt(t, e.addr, attackerIP)
	if res := evil.request("BYE", id, tag, 2, "", "", ""); codeOf(res) != "403" {
		t.Errorf("BYE from outside the allow-list: %s", res)
	}
	if res := evil.request("OPTIONS", newCallID("allow"), "", 1, "", "", ""); codeOf(res) != "403" {
		t.Errorf("OPTIONS from outside the allow-list: %s", res)
	}
	if res := evil.request("INVITE", newCallID("allow"), "", 1, "", "application/sdp", evil.offer()); codeOf(res) != "403" {
		t.Errorf("INVITE from outside the allow-list: %s", res)
	}
	if n := e.forbidden("allow_list"); n != 3 || e.srv.Calls() != 1 {
		t.Errorf("forbidden{allow_list} = %v, %d calls: want 3 and the call up", n, e.srv.Calls())
	}
	if res := u.request("BYE", id, tag, 20, "", "", ""); codeOf(res) != "200" {
		t.Errorf("caller's BYE: %s", res)
	}
}

// TestSIPpCallSurvivesForgedBye runs SIPp's uac_pcap call while a forger on 127.0.0.2 that saw
// the INVITE and the 200 OK (Call-ID, both tags, the request-URI) sends a BYE, an UPDATE and an
// INFO for the dialog: each gets 403, and SIPp's call keeps every frame of its pcap, exactly,
// and ends with SIPp's own BYE (which SIPp requires to get 200).
func TestSIPpCallSurvivesForgedBye(t *testing.T) {
	e := startEnv(t, 1, nil)
	dir := pcapDir(t)
	evil := newUACAt(t, e.addr, attackerIP)
	answers := make(chan string, 3) // the forger's responses, or what went wrong
	go func() {
		defer close(answers)
		var c *callState
		for deadline := time.Now().Add(20 * time.Second); c == nil && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			e.srv.mu.Lock()
			for _, cs := range e.srv.calls {
				c = cs
			}
			e.srv.mu.Unlock()
		}
		if c == nil {
			answers <- "SIPp's call was never answered"
			return
		}
		inv := c.dlg.InviteRequest // its To has the tag callrouter gave the dialog
		for i, m := range []string{"BYE", "UPDATE", "INFO"} {
			msg := fmt.Sprintf("%s %s SIP/2.0\r\nVia: SIP/2.0/UDP %s;rport;branch=z9hG4bKforged%d\r\nFrom: %s\r\nTo: %s\r\n"+
				"Call-ID: %s\r\nCSeq: %d %s\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
				m, inv.From().Address.String(), evil.local(), i, inv.From().Value(), inv.To().Value(), inv.CallID().Value(), 100+i, m)
			if _, err := evil.conn.WriteToUDP([]byte(msg), evil.dst); err != nil {
				answers <- err.Error()
				return
			}
			select {
			case res := <-evil.in:
				answers <- m + ": " + res
			case <-time.After(10 * time.Second):
				answers <- m + ": no answer"
				return
			}
		}
	}()
	e.sipp(t, dir, 40*time.Second, "-sn", "uac_pcap", "-m", "1", "-l", "1")
	n := 0
	for a := range answers {
		if n++; !strings.Contains(a, ": SIP/2.0 403 ") {
			t.Errorf("forged request: %s", a)
		}
	}
	if n != 3 {
		t.Errorf("%d forged requests answered, want 3", n)
	}
	eventually(t, 10*time.Second, "the worker to stop the call", func() bool { return len(callKeys()) == 1 })
	var want []byte
	for _, p := range pcapRTP(t, "/usr/share/sip-tester/g711a.pcap") {
		want = append(want, p...)
	}
	checkPcapLeg(t, callKeys()[0]+"/0", rec.snapshot(callKeys()[0]+"/0"), want)
	if n := e.forbidden("dialog_source"); n != 3 {
		t.Errorf("forbidden{dialog_source} = %v, want 3", n)
	}
	if n := testutil.ToFloat64(e.srv.m.ended.WithLabelValues("hangup")); n != 1 {
		t.Errorf("%v calls ended by a BYE, want SIPp's one", n)
	}
}

// TestInviteHopsBounded fills the INVITE hop table past its bound: it keeps maxInviteHops
// entries, the newest, and still checks their CANCELs.
func TestInviteHopsBounded(t *testing.T) {
	h := newInviteHops()
	now := time.Now()
	inviteFrom := func(i int) *sip.Request {
		req := sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", User: "svc", Host: "127.0.0.1"})
		params := sip.NewParams()
		params.Add("branch", "z9hG4bK"+strconv.Itoa(i))
		req.AppendHeader(&sip.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: "UDP", Host: "127.0.0.1", Port: 5060,
			Params: params})
		cid := sip.CallIDHeader("call-" + strconv.Itoa(i))
		req.AppendHeader(&cid)
		return req
	}
	caller := peer{transport: "UDP", addr: netip.MustParseAddrPort("127.0.0.1:5060")}
	other := peer{transport: "UDP", addr: netip.MustParseAddrPort("127.0.0.2:5060")}
	for i := range maxInviteHops + 100 {
		h.record(inviteFrom(i), caller, now)
	}
	if n := len(h.m); n != maxInviteHops {
		t.Errorf("%d entries, want %d", n, maxInviteHops)
	}
	newest := inviteFrom(maxInviteHops + 99)
	if h.cancelAllowed(DialogCheckAddr, newest, other, now) || !h.cancelAllowed(DialogCheckAddr, newest, caller, now) {
		t.Error("the newest INVITE's CANCEL is not checked")
	}
	if !h.cancelAllowed(DialogCheckAddr, newest, other, now.Add(inviteHopLife)) {
		t.Error("an entry outlived its INVITE transaction")
	}
}
