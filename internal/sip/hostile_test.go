package sip

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/guard"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
)

// seriesOf returns the number of series of the metric family name in reg, and the size of reg's
// whole text exposition (what /metrics would serve).
func seriesOf(t testing.TB, reg *prometheus.Registry, name string) (series, bytesOut int) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	for _, mf := range mfs {
		if mf.GetName() == name {
			series = len(mf.GetMetric())
		}
		if _, err := expfmt.MetricFamilyToText(&buf, mf); err != nil {
			t.Fatal(err)
		}
	}
	return series, buf.Len()
}

// udpPeer is a raw SIP sender over UDP from a chosen loopback address that counts the final
// responses it receives.
type udpPeer struct {
	conn  *net.UDPConn
	dst   *net.UDPAddr
	final atomic.Int64
	byMsg chan string
}

func newUDPPeer(t testing.TB, ip net.IP, addr string) *udpPeer {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip})
	if err != nil {
		t.Fatal(err)
	}
	dst, _ := net.ResolveUDPAddr("udp", addr)
	p := &udpPeer{conn: c, dst: dst, byMsg: make(chan string, 1024)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			m := string(buf[:n])
			if strings.HasPrefix(m, "SIP/2.0 ") && !strings.HasPrefix(m, "SIP/2.0 1") {
				p.final.Add(1)
				select {
				case p.byMsg <- m:
				default:
				}
			}
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return p
}

func (p *udpPeer) local() string { return p.conn.LocalAddr().String() }

// send writes one request with the given method, Call-ID and extra headers.
func (p *udpPeer) send(t testing.TB, method, callID, hdrs, body string) {
	t.Helper()
	msg := fmt.Sprintf("%s sip:svc@%s SIP/2.0\r\nVia: SIP/2.0/UDP %s;rport;branch=z9hG4bK-%s\r\nFrom: <sip:a@127.0.0.1>;tag=f%s\r\n"+
		"To: <sip:svc@%s>\r\nCall-ID: %s\r\nCSeq: 1 %s\r\nContact: <sip:a@%s>\r\nMax-Forwards: 70\r\n%sContent-Length: %d\r\n\r\n%s",
		method, p.dst, p.local(), callID, callID, p.dst, callID, method, p.local(), hdrs, len(body), body)
	if _, err := p.conn.WriteToUDP([]byte(msg), p.dst); err != nil {
		t.Fatal(err)
	}
}

// TestMethodFloodKeepsSeriesBounded sends thousands of requests with distinct, unknown method
// names over real UDP: every one is answered 501, and the responses metric keeps one series per
// known method and code plus "other" instead of one per name the network made up.
func TestMethodFloodKeepsSeriesBounded(t *testing.T) {
	e := startEnv(t, 1, nil)
	p := newUDPPeer(t, net.IPv4(127, 0, 0, 1), e.addr)
	const name = "callrouter_sip_responses_total"
	p.send(t, "OPTIONS", "warm", "", "")
	eventually(t, 10*time.Second, "the OPTIONS answer", func() bool { return p.final.Load() == 1 })
	before, sizeBefore := seriesOf(t, e.reg, name)

	const n, batch = 5000, 50 // batches small enough for the sockets' receive buffers
	for sent := 0; sent < n; {
		for i := 0; i < batch; i++ {
			p.send(t, fmt.Sprintf("XFLOOD%05d", sent), fmt.Sprintf("flood-%d", sent), "", "")
			sent++
		}
		want := int64(sent + 1)
		eventually(t, 20*time.Second, "the flood's 501s", func() bool { return p.final.Load() >= want })
	}
	after, sizeAfter := seriesOf(t, e.reg, name)
	t.Logf("%d distinct methods: %s series %d → %d, registry text %d → %d bytes", n, name, before, after, sizeBefore, sizeAfter)
	if after > before+1 {
		t.Fatalf("%s grew from %d to %d series on %d unknown method names; want at most one more (other)", name, before, after, n)
	}
}

// TestPanicsEndOneCall injects a panic into a request handler and into one call's RTP read loop:
// the request gets 500, the call with the poisoned packet ends (reason error, BYE to the peer),
// and a call running next to it keeps every frame, with a port per call and with the calls on
// the one shared port (-sip-rtp-shared), where both calls' packets come through one reader.
func TestPanicsEndOneCall(t *testing.T) {
	t.Run("port per call", func(t *testing.T) { testPanicsEndOneCall(t, false) })
	t.Run("shared port", func(t *testing.T) { testPanicsEndOneCall(t, true) })
}

func testPanicsEndOneCall(t *testing.T, shared bool) {
	e := startEnv(t, 1, func(c *Config) { c.RTPShared = shared })
	handlerPanic := func(req *sip.Request) {
		if req.GetHeader("X-Test-Panic") != nil {
			panic("injected handler panic")
		}
	}
	e.srv.handlerHook.Store(&handlerPanic)
	packetPanic := func(raw []byte) {
		if len(raw) > 12 && raw[12] == 0xEE {
			panic("injected RTP panic")
		}
	}
	e.srv.packetHook.Store(&packetPanic)
	panics := func(where string) float64 { return testutil.ToFloat64(guard.Panics.WithLabelValues(where)) }
	h0, r0 := panics("sip_handler"), panics("sip_rtp")

	bad := newUAC(t, e.addr)
	if res := bad.request("OPTIONS", newCallID("panic"), "", 1, "X-Test-Panic: 1\r\n", "", ""); codeOf(res) != "500" {
		t.Fatalf("a panicking handler answered %q, want 500", res[:min(len(res), 40)])
	}
	good, victim := newUAC(t, e.addr), newUAC(t, e.addr)
	goodID, victimID := newCallID("good"), newCallID("victim")
	ports, tags := map[string]int{}, map[string]string{}
	for id, u := range map[string]*uac{goodID: good, victimID: victim} {
		res := u.invite(id, "")
		if codeOf(res) != "200" {
			t.Fatalf("call %s after a handler panic: %s", id, res)
		}
		p := 0
		fmt.Sscan(mPortRe.FindStringSubmatch(res)[1], &p)
		ports[id], tags[id] = p, toTagRe.FindStringSubmatch(res)[1]
	}
	if shared && ports[goodID] != ports[victimID] {
		t.Fatalf("shared port mode answered ports %v, want one port", ports)
	}
	done := make(chan error, 1)
	go func() { done <- rtpStream(good.rtp, ports[goodID], 100) }()
	sendRTP(t, victim.rtp, ports[victimID], 5, 1, 0)
	poison := make([]byte, 12+160)
	// The victim's own SSRC (7, as sendRTP's): on the shared port a packet of another SSRC from
	// the call's source is not the call's and never reaches its stream.
	poison[0], poison[3], poison[11], poison[12] = 0x80, 6, 7, 0xEE
	if _, err := victim.rtp.WriteToUDP(poison, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: ports[victimID]}); err != nil {
		t.Fatal(err)
	}
	if !victim.awaitBye(victimID, 10*time.Second) {
		t.Fatal("no BYE for the call whose read loop panicked")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if res := good.request("BYE", goodID, tags[goodID], 2, "", "", ""); codeOf(res) != "200" {
		t.Fatalf("BYE of the other call: %s", res)
	}
	eventually(t, 10*time.Second, "both calls to end", func() bool { return len(rec.stoppedCalls()) == 2 })
	if n := testutil.ToFloat64(e.srv.m.ended.WithLabelValues(reasonError)); n != 1 {
		t.Errorf("%v calls ended with reason error, want 1", n)
	}
	if h, r := panics("sip_handler")-h0, panics("sip_rtp")-r0; h != 1 || r != 1 {
		t.Errorf("panics counted: handler %v, rtp %v; want 1 and 1", h, r)
	}
	for _, k := range callKeys() {
		if !strings.Contains(k, "good") {
			continue
		}
		l := rec.snapshot(k + "/0")
		if real := len(l.seqs) - l.gapFilled; real != 100 || len(l.gaps) != 0 {
			t.Errorf("the other call: %d real frames of 100, gaps %v", real, l.gaps)
		}
	}
}

// TestRejectionSentOnceOverUDP sends INVITEs that are refused from a source that never ACKs, as a
// forged source address would: each gets its rejection once, never the timer G retransmissions
// (0.5 s, 1.5 s, 3.5 s, ...) that would reflect ten responses for one datagram.
func TestRejectionSentOnceOverUDP(t *testing.T) {
	e := startEnv(t, 1, func(c *Config) { c.Codecs = []string{"g722"} })
	p := newUDPPeer(t, net.IPv4(127, 0, 0, 1), e.addr)
	pcmu := "v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
	const n = 5
	for i := 0; i < n; i++ {
		p.send(t, "INVITE", fmt.Sprintf("spoofed-%d", i), "Content-Type: application/sdp\r\n", pcmu)
	}
	eventually(t, 10*time.Second, "the rejections", func() bool { return p.final.Load() >= n })
	time.Sleep(2 * time.Second) // past timer G's first two retransmissions (0.5 s and 1.5 s)
	if got := p.final.Load(); got != n {
		t.Fatalf("%d final responses to %d rejected INVITEs from a source that never ACKed; want %d", got, n, n)
	}
	if m := <-p.byMsg; !strings.HasPrefix(m, "SIP/2.0 488") {
		t.Fatalf("rejection: %.40q, want 488", m)
	}
}

// rtpStream sends n 20 ms PCMU packets from conn to port and returns the first error (for use on
// goroutines other than the test's).
func rtpStream(conn *net.UDPConn, port, n int) error {
	dst := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
	pkt := make([]byte, 12+160)
	pkt[0], pkt[11] = 0x80, 7
	for j := 12; j < len(pkt); j++ {
		pkt[j] = 0x11
	}
	next := time.Now()
	for i := 0; i < n; i++ {
		seq, ts := uint16(1+i), uint32(160*i)
		pkt[2], pkt[3] = byte(seq>>8), byte(seq)
		pkt[4], pkt[5], pkt[6], pkt[7] = byte(ts>>24), byte(ts>>16), byte(ts>>8), byte(ts)
		if _, err := conn.WriteToUDP(pkt, dst); err != nil {
			return err
		}
		next = next.Add(20 * time.Millisecond)
		time.Sleep(time.Until(next))
	}
	return nil
}

// answered places a call from u and returns its RTP port and To tag.
func answered(t *testing.T, u *uac, id string) (port int, tag string) {
	t.Helper()
	res := u.invite(id, "")
	if codeOf(res) != "200" {
		t.Fatalf("call %s: %.60q", id, res)
	}
	fmt.Sscan(mPortRe.FindStringSubmatch(res)[1], &port)
	return port, toTagRe.FindStringSubmatch(res)[1]
}

// everyFrame checks that the worker saw n real frames and no gap on every call whose key
// contains prefix, and that there are want such calls.
func everyFrame(t *testing.T, prefix string, want, n int) {
	t.Helper()
	got := 0
	for _, k := range callKeys() {
		if !strings.Contains(k, prefix) {
			continue
		}
		got++
		l := rec.snapshot(k + "/0")
		if real := len(l.seqs) - l.gapFilled; real != n || len(l.gaps) != 0 {
			t.Errorf("%s: %d real frames of %d, gaps %v", k, real, n, l.gaps)
		}
	}
	if got != want {
		t.Errorf("%d calls %s* ended at the worker, want %d", got, prefix, want)
	}
}

// TestInviteFloodFromOneSource floods INVITEs over UDP from 127.0.0.2 past its rate: the ones
// past the bucket are dropped unanswered (and counted), while a call from 127.0.0.1 that was up
// keeps every frame and a new call from 127.0.0.1 during the flood still connects.
func TestInviteFloodFromOneSource(t *testing.T) {
	const rate, burst = 20, 20
	e := startEnv(t, 1, func(c *Config) { c.InviteRate, c.InviteBurst = rate, burst })
	u1, u2 := newUAC(t, e.addr), newUAC(t, e.addr)
	id1, id2 := newCallID("steady"), newCallID("steady")
	port1, tag1 := answered(t, u1, id1)

	flood := newUDPPeer(t, net.IPv4(127, 0, 0, 2), e.addr)
	// G.729 only: an INVITE the bucket lets through gets 488 (sent once), not a call.
	offer := "v=0\r\no=t 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 4000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n"
	const n = 3000
	var cpu0, cpu1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &cpu0)
	start := time.Now()
	flooding := make(chan error, 1)
	go func() {
		for i := 0; i < n; i++ {
			msg := fmt.Sprintf("INVITE sip:svc@%s SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-f%d\r\nFrom: <sip:x@127.0.0.2>;tag=f%d\r\n"+
				"To: <sip:svc@%s>\r\nCall-ID: flood-%d\r\nCSeq: 1 INVITE\r\nContact: <sip:x@%s>\r\nMax-Forwards: 70\r\n"+
				"Content-Type: application/sdp\r\nContent-Length: %d\r\n\r\n%s", e.addr, flood.local(), i, i, e.addr, i, flood.local(), len(offer), offer)
			if _, err := flood.conn.WriteToUDP([]byte(msg), flood.dst); err != nil {
				flooding <- err
				return
			}
			if i%20 == 19 {
				// About 1,000 INVITEs a second: far past the bucket, and slow enough that the
				// server's socket buffer never overflows on a loaded machine (a dropped datagram
				// of the other source's INVITE would not be retransmitted by this test's client).
				time.Sleep(20 * time.Millisecond)
			}
		}
		flooding <- nil
	}()
	streaming := make(chan error, 1)
	go func() { streaming <- rtpStream(u1.rtp, port1, 150) }()
	port2, tag2 := answered(t, u2, id2) // from another source, during the flood
	if err := rtpStream(u2.rtp, port2, 100); err != nil {
		t.Fatal(err)
	}
	if err := <-flooding; err != nil {
		t.Fatal(err)
	}
	// The server may still be working through the flood (a loaded machine): the bucket refills
	// until it is done, so the bound is taken when its counts have stopped moving.
	seen := func() float64 {
		return testutil.ToFloat64(e.srv.m.refused.WithLabelValues("invite_rate")) + float64(flood.final.Load())
	}
	for last := -1.0; seen() != last; time.Sleep(300 * time.Millisecond) {
		last = seen()
	}
	elapsed := time.Since(start)
	if err := <-streaming; err != nil {
		t.Fatal(err)
	}
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &cpu1)
	for _, c := range []struct {
		u   *uac
		id  string
		tag string
	}{{u1, id1, tag1}, {u2, id2, tag2}} {
		if res := c.u.request("BYE", c.id, c.tag, 2, "", "", ""); codeOf(res) != "200" {
			t.Fatalf("BYE %s: %.40q", c.id, res)
		}
	}
	eventually(t, 10*time.Second, "both calls to end at the worker", func() bool { return len(callKeys()) == 2 })

	dropped := testutil.ToFloat64(e.srv.m.refused.WithLabelValues("invite_rate"))
	answeredFlood := flood.final.Load()
	allowed := burst + rate*elapsed.Seconds() + 1
	cpu := time.Duration(cpu1.Utime.Nano()+cpu1.Stime.Nano()-cpu0.Utime.Nano()-cpu0.Stime.Nano()) * time.Nanosecond
	t.Logf("%d INVITEs from one source in %v: %v dropped by its rate, %d answered; process CPU %v", n, elapsed.Round(time.Millisecond), dropped, answeredFlood, cpu.Round(time.Millisecond))
	if float64(answeredFlood) > allowed {
		t.Errorf("%d flood INVITEs answered in %v, want at most %.0f (burst %d + %d/s)", answeredFlood, elapsed, allowed, burst, rate)
	}
	if dropped < n-allowed-1 {
		t.Errorf("%v INVITEs dropped for their rate, want at least %.0f", dropped, n-allowed-1)
	}
	l1 := rec.snapshot(keyOf(t, id1) + "/0")
	l2 := rec.snapshot(keyOf(t, id2) + "/0")
	for _, c := range []struct {
		l    legLog
		want int
	}{{l1, 150}, {l2, 100}} {
		if real := len(c.l.seqs) - c.l.gapFilled; real != c.want || len(c.l.gaps) != 0 {
			t.Errorf("a call from the other source: %d real frames of %d, gaps %v", real, c.want, c.l.gaps)
		}
	}
}

// keyOf returns the recorder key ("tenant/call") of the SIP Call-ID id.
func keyOf(t *testing.T, id string) string {
	t.Helper()
	for _, k := range callKeys() {
		if strings.Contains(k, subjects.Encode(id)) {
			return k
		}
	}
	t.Fatalf("no call %s at the worker (have %v)", id, callKeys())
	return ""
}

// TestTCPLimits holds SIP TCP connections the way an attacker would: past the per-source cap a
// connection is closed at once while another source still gets served; a connection that says
// nothing, one that stops half way through a message and one left idle after a message are each
// closed by their timeout; INVITEs past the source's rate get 503 with Retry-After.
func TestTCPLimits(t *testing.T) {
	const perSource = 4
	e := startEnv(t, 1, func(c *Config) {
		c.TCPConnsPerSource, c.TCPMessageTimeout, c.TCPIdleTimeout = perSource, 2*time.Second, 3*time.Second
		c.InviteRate, c.InviteBurst = 1, 2
	})
	dialFrom := func(ip net.IP) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}}
		c, err := d.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// closed reports whether the server closes c within d (reading what it sends first).
	closed := func(c net.Conn, d time.Duration) bool {
		_ = c.SetReadDeadline(time.Now().Add(d))
		_, err := io.Copy(io.Discard, c)
		var ne net.Error
		return !(errors.As(err, &ne) && ne.Timeout())
	}
	request := func(method, callID string) string {
		return fmt.Sprintf("%s sip:svc@%s SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK-%s\r\nFrom: <sip:a@127.0.0.1>;tag=f%s\r\n"+
			"To: <sip:svc@%s>\r\nCall-ID: %s\r\nCSeq: 1 %s\r\nContact: <sip:a@127.0.0.1;transport=tcp>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
			method, e.addr, callID, callID, e.addr, callID, method)
	}
	src2 := net.IPv4(127, 0, 0, 2)
	var held []net.Conn
	for i := 0; i < perSource; i++ {
		held = append(held, dialFrom(src2))
	}
	if !closed(dialFrom(src2), 5*time.Second) {
		t.Error("a connection past the per-source cap was kept open")
	}
	other := dialFrom(net.IPv4(127, 0, 0, 1))
	if _, err := io.WriteString(other, request("OPTIONS", "tcp-opt")); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(other)
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "SIP/2.0 200") {
		t.Fatalf("OPTIONS from another source while one is at its cap: %q %v", line, err)
	}
	for i, c := range held {
		if i == 1 {
			_, _ = io.WriteString(c, "OPTIONS sip:svc@x SIP/2.0\r\nVia: SIP/2.0/TCP") // and no more
		}
		if !closed(c, 10*time.Second) {
			t.Errorf("held connection %d is still open after 10 s", i)
		}
	}
	if !closed(other, 10*time.Second) {
		t.Error("an idle connection is still open after 10 s")
	}
	for _, reason := range []string{"tcp_source_conns", "tcp_slow", "tcp_idle"} {
		if v := testutil.ToFloat64(e.srv.m.refused.WithLabelValues(reason)); v < 1 {
			t.Errorf("refused{%s} = %v", reason, v)
		}
	}

	inv := dialFrom(src2)
	var codes []string
	r = bufio.NewReader(inv)
	for i := 0; i < 4; i++ {
		if _, err := io.WriteString(inv, request("INVITE", fmt.Sprintf("tcp-inv-%d", i))); err != nil {
			t.Fatal(err)
		}
		for {
			_ = inv.SetReadDeadline(time.Now().Add(10 * time.Second))
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("INVITE %d over TCP: %v", i, err)
			}
			if strings.HasPrefix(line, "SIP/2.0 ") && !strings.HasPrefix(line, "SIP/2.0 1") {
				codes = append(codes, line[8:11])
				break
			}
		}
	}
	if codes[2] != "503" || codes[3] != "503" || codes[0] == "503" {
		t.Errorf("INVITEs over TCP past a burst of 2 answered %v, want the last two 503", codes)
	}
}
