package sip

import (
	"bytes"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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
