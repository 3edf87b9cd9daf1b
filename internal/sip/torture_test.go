package sip

import (
	"bytes"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const tortureDir = "testdata/rfc4475"

// tortureWant says, per RFC 4475 message, which final responses a UAS may send: a list of
// codes, "any" (a liberal answer is allowed, or the response goes elsewhere), "not400" (process
// normally) or "drop" (no response at all).
var tortureWant = map[string]string{
	"wsinv": "not400", "intmeth": "501", "esc01": "not400", "escnull": "405 501", "esc02": "501", "lwsdisp": "200",
	"longreq": "any", // over UDP its Via names TCP to sip33.example.com: the answer goes elsewhere
	"dblreq":  "405 501", "semiuri": "200 404", "transports": "200", "mpart01": "405 501 415",
	"unreason": "drop", "noreason": "drop", "badinv01": "400", "clerr": "400", "ncl": "400", "scalar02": "400",
	"scalarlg": "drop", "quotbal": "any", "ltgtruri": "any", "lwsruri": "any", "lwsstart": "any", "trws": "any",
	"escruri": "any", "baddate": "any", "regbadct": "any", "badaspec": "any", "baddn": "any", "badvers": "505",
	"mismatch01": "400", "mismatch02": "501 400", "bigcode": "drop", "badbranch": "400 200", "insuf": "400 drop",
	"unkscm": "416", "novelsc": "416 404", "unksm2": "405 501 400", "bext01": "420", "invut": "415", "regaut01": "405",
	"multi01": "400", "mcl01": "400", "bcast": "drop", "zeromf": "200", "cparam01": "405 501", "cparam02": "405 501",
	"regescrt": "405 501", "sdp01": "406 400", "inv2543": "not400", "test": "any",
}

var callIDRe = regexp.MustCompile(`(?im)^(?:call-id|i)[ \t]*:[ \t]*(\S+)`)
var statusRe = regexp.MustCompile(`^SIP/2\.0 (\d{3})`)

// TestRFC4475Torture sends every RFC 4475 torture message over UDP while a SIPp call with RTP
// is in progress. Each gets an acceptable answer (400 for the malformed ones) or none, the
// server keeps answering, and the SIPp call still delivers every frame.
func TestRFC4475Torture(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(tortureDir, "*.dat"))
	if len(files) < 49 {
		t.Skipf("RFC 4475 messages not found in %s", tortureDir)
	}
	e := startEnv(t, 1, nil)
	dir := pcapDir(t)
	sippDone := make(chan struct{})
	go func() {
		defer close(sippDone)
		e.sipp(t, dir, 40*time.Second, "-sn", "uac_pcap", "-m", "1", "-l", "1")
	}()
	eventually(t, 10*time.Second, "the SIPp call", func() bool { return e.srv.Calls() == 1 })

	// Responses go to the Via's port 5060 at the source address: listen there on a loopback
	// address of our own.
	var conn *net.UDPConn
	for i := 0; conn == nil; i++ {
		ip := net.IPv4(127, byte(64+rand.IntN(128)), byte(rand.IntN(256)), byte(1+rand.IntN(250)))
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip, Port: 5060})
		if err == nil {
			conn = c
		} else if i > 20 {
			t.Fatal(err)
		}
	}
	defer conn.Close()
	var mu sync.Mutex
	got := map[string][]string{} // Call-ID → final responses (first lines and headers)
	go func() {
		buf := make([]byte, 65536)
		for {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			msg := string(buf[:n])
			m := statusRe.FindStringSubmatch(msg)
			id := callIDRe.FindStringSubmatch(msg)
			if m == nil || id == nil || m[1][0] == '1' {
				continue
			}
			mu.Lock()
			got[id[1]] = append(got[id[1]], msg)
			mu.Unlock()
		}
	}()
	// Vias that name TCP ask for the response over a TCP connection to the same address.
	tl, err := net.ListenTCP("tcp", &net.TCPAddr{IP: conn.LocalAddr().(*net.UDPAddr).IP, Port: 5060})
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 65536)
				for {
					_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					for _, msg := range strings.SplitAfter(string(buf[:n]), "\r\n\r\n") {
						m := statusRe.FindStringSubmatch(msg)
						id := callIDRe.FindStringSubmatch(msg)
						if m == nil || id == nil || m[1][0] == '1' {
							continue
						}
						mu.Lock()
						got[id[1]] = append(got[id[1]], msg)
						mu.Unlock()
					}
				}
			}()
		}
	}()
	dst := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(e.srv.Addr().Port())}
	ids := map[string][]string{}
	retrans := map[string]bool{} // names whose transaction key repeats an earlier message's
	seenKeys := map[string]bool{}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".dat")
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range callIDRe.FindAllSubmatch(b, -1) {
			ids[name] = append(ids[name], string(id[1]))
		}
		if k := txKey(b); k != "" {
			retrans[name] = seenKeys[k]
			seenKeys[k] = true
		}
		if _, err := conn.WriteToUDP(b, dst); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Wait for every message that must be answered.
	deadline := time.Now().Add(15 * time.Second)
	for {
		missing := []string{}
		mu.Lock()
		for name, want := range tortureWant {
			if want != "any" && !strings.Contains(want, "drop") && !retrans[name] && len(responses(got, ids[name])) == 0 {
				missing = append(missing, name)
			}
		}
		mu.Unlock()
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			mu.Lock()
			for id, rs := range got {
				t.Logf("response for %s: %q", id, firstLine(rs[0]))
			}
			mu.Unlock()
			t.Errorf("no final response to %v", missing)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // stragglers for the "drop" cases (a negative can only be checked after a wait)
	mu.Lock()
	for name, want := range tortureWant {
		if name == "dblreq" {
			if extra := got["dblreq.0ha0isnda977644900765@192.0.2.15"]; len(extra) > 0 {
				t.Errorf("dblreq: the trailing INVITE octets were answered: %q", firstLine(extra[0]))
			}
		}
		judge(t, "udp", name, want, responses(got, ids[name]), retrans[name])
	}
	mu.Unlock()

	// The server still answers, and the SIPp call was not disturbed.
	opt := "OPTIONS sip:ping@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP " + conn.LocalAddr().String() + ";branch=z9hG4bKping1\r\n" +
		"From: <sip:t@x>;tag=1\r\nTo: <sip:ping@127.0.0.1>\r\nCall-ID: ping-after-torture\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
	if _, err := conn.WriteToUDP([]byte(opt), dst); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "200 to OPTIONS after the torture", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got["ping-after-torture"]) > 0 && strings.HasPrefix(got["ping-after-torture"][0], "SIP/2.0 200")
	})
	<-sippDone
	var want []byte
	for _, p := range pcapRTP(t, "/usr/share/sip-tester/g711a.pcap") {
		want = append(want, p...)
	}
	eventually(t, 10*time.Second, "the SIPp call to stop at the worker", func() bool {
		for _, k := range callKeys() {
			if strings.HasPrefix(rec.snapshot(k+"/0").name, "caller") && len(rec.snapshot(k+"/0").payload) >= len(want) {
				return true
			}
		}
		return false
	})
	found := false
	for _, k := range callKeys() {
		l := rec.snapshot(k + "/0")
		if len(l.payload) >= len(want) && bytes.Equal(l.payload[:160], want[:160]) {
			found = checkPcapLeg(t, k, l, want)
		}
	}
	if !found {
		t.Errorf("the SIPp call did not deliver every frame during the torture")
	}
}

// judge checks the final responses one torture message got against what RFC 4475 allows.
func judge(t *testing.T, transport, name, want string, rs []string, retrans bool) {
	t.Helper()
	if want == "any" || retrans || len(rs) == 0 {
		return // a missing answer where one is required is reported by the caller
	}
	code := statusRe.FindStringSubmatch(rs[0])[1]
	switch {
	case want == "drop":
		t.Errorf("%s %s: answered %q, want no response", transport, name, firstLine(rs[0]))
	case want == "not400":
		if code == "400" {
			t.Errorf("%s %s: answered %q, want any final response but 400\n%s", transport, name, firstLine(rs[0]), rs[0])
		}
	case !strings.Contains(" "+want+" ", " "+code+" "):
		t.Errorf("%s %s: answered %q, want one of %s\n%s", transport, name, firstLine(rs[0]), want, rs[0])
	}
	if name == "bext01" && !strings.Contains(rs[0], "nothingSupportsThis") {
		t.Errorf("%s bext01: 420 without the Unsupported option tags:\n%s", transport, rs[0])
	}
	if !strings.HasPrefix(rs[0], "SIP/2.0 ") {
		t.Errorf("%s %s: response of another version: %q", transport, name, firstLine(rs[0]))
	}
}

// tortureOverTCP changes the expectations where RFC 4475 says TCP differs: clerr waits for
// more data, ncl and mcl01 cannot be framed, dblreq is two messages, inv2543 has no
// Content-Length, baddn's header section never ends.
var tortureOverTCP = map[string]string{"clerr": "any", "ncl": "400 drop", "mcl01": "400 drop", "dblreq": "any", "inv2543": "any",
	"baddn": "any"}

// TestRFC4475TortureTCP sends every torture message on its own TCP connection (as RFC 4475's
// harnesses do) and checks the answers that come back on it.
func TestRFC4475TortureTCP(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(tortureDir, "*.dat"))
	if len(files) < 49 {
		t.Skipf("RFC 4475 messages not found in %s", tortureDir)
	}
	e := startEnv(t, 1, nil)
	type result struct {
		name string
		rs   []string
	}
	results := make(chan result, len(files))
	retrans := map[string]bool{}
	seenKeys := map[string]bool{}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".dat")
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if k := txKey(b); k != "" {
			retrans[name] = seenKeys[k]
			seenKeys[k] = true
		}
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		go func() {
			defer c.Close()
			var rs []string
			var acc string
			_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
			buf := make([]byte, 65536)
			for len(rs) == 0 {
				n, err := c.Read(buf)
				acc += string(buf[:n])
				for {
					i := strings.Index(acc, "\r\n\r\n")
					if i < 0 {
						break
					}
					msg := acc[:i+4]
					acc = acc[i+4:]
					if m := statusRe.FindStringSubmatch(msg); m != nil && m[1][0] != '1' {
						rs = append(rs, msg)
					}
				}
				if err != nil {
					break
				}
			}
			results <- result{name, rs}
		}()
		time.Sleep(5 * time.Millisecond)
	}
	for range files {
		r := <-results
		want := tortureWant[r.name]
		if w, ok := tortureOverTCP[r.name]; ok {
			want = w
		}
		if r.name == "longreq" {
			want = "not400" // over TCP the answer comes back on the connection
		}
		if len(r.rs) == 0 && want != "any" && !strings.Contains(want, "drop") && !retrans[r.name] {
			t.Errorf("tcp %s: no final response (want %s)", r.name, want)
		}
		judge(t, "tcp", r.name, want, r.rs, retrans[r.name])
	}
	res := newUAC(t, e.addr).request("OPTIONS", newCallID("after-tcp"), "", 1, "", "", "")
	if codeOf(res) != "200" {
		t.Errorf("OPTIONS after the TCP torture: %s", res)
	}
}

func responses(got map[string][]string, ids []string) []string {
	var out []string
	for _, id := range ids {
		out = append(out, got[id]...)
	}
	return out
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\r\n")
	return l
}

var (
	viaRe    = regexp.MustCompile(`(?im)^(?:via|v)[ \t]*:[ \t]*SIP[ \t]*/[ \t]*[\d.]+[ \t]*/[ \t]*\w+[ \t]+([^;\r\n]+)(.*)$`)
	branchRe = regexp.MustCompile(`(?i)branch=([^;,\s]+)`)
	cseqRe   = regexp.MustCompile(`(?im)^cseq[ \t]*:[ \t]*\d+[ \t]+(\S+)`)
)

// txKey approximates the RFC 3261 section 17.2.3 server transaction key of a raw request:
// several torture messages share a branch, sent-by and method, so the server rightly treats
// the later ones as retransmissions within the transaction's lifetime.
func txKey(b []byte) string {
	v := viaRe.FindSubmatch(b)
	br := branchRe.FindSubmatch(b)
	c := cseqRe.FindSubmatch(b)
	if v == nil || br == nil || c == nil {
		return ""
	}
	host := strings.TrimSpace(string(v[1]))
	if !strings.Contains(host, ":") {
		host += ":" + strconv.Itoa(5060)
	}
	m := strings.ToUpper(string(c[1]))
	if m == "ACK" {
		m = "INVITE"
	}
	return string(br[1]) + "|" + strings.ToLower(host) + "|" + m
}
