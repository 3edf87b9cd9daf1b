package sip

import (
	"bytes"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/guard"
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
// and a call running next to it keeps every frame.
func TestPanicsEndOneCall(t *testing.T) {
	e := startEnv(t, 1, nil)
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
	done := make(chan struct{})
	go func() { defer close(done); sendRTP(t, good.rtp, ports[goodID], 100, 1, 0) }()
	sendRTP(t, victim.rtp, ports[victimID], 5, 1, 0)
	poison := make([]byte, 12+160)
	poison[0], poison[3], poison[11], poison[12] = 0x80, 6, 9, 0xEE
	if _, err := victim.rtp.WriteToUDP(poison, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: ports[victimID]}); err != nil {
		t.Fatal(err)
	}
	if !victim.awaitBye(victimID, 10*time.Second) {
		t.Fatal("no BYE for the call whose read loop panicked")
	}
	<-done
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
