package loadtest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// uac is the SIP mode's user agent client: one UDP socket for the signalling of every call
// (RFC 3261 over UDP, INVITE/ACK/BYE, retransmitted on Timer A), a reader that hands responses
// to the transactions waiting for them and answers the server's own BYEs.
type uac struct {
	conn  *net.UDPConn
	dst   *net.UDPAddr
	local string
	user  string // request-URI user: the tenant, for a "ruri-user" tenant rule

	mu    sync.Mutex
	waits map[string]chan *sipMsg // "call-id cseq method" → its transaction
	byes  map[string]func()       // call-id → what to do when the server hangs up
	done  chan struct{}
	wg    sync.WaitGroup
}

// sipMsg is a parsed SIP message: its first line, header lines and body.
type sipMsg struct {
	first string
	lines []string // header lines, unfolded
	body  string
}

// Compact header forms (RFC 3261 section 7.3.3) this client reads.
var compact = map[string]string{"i": "call-id", "v": "via", "f": "from", "t": "to", "m": "contact", "l": "content-length", "c": "content-type"}

func parseSIP(b []byte) (*sipMsg, bool) {
	s := string(b)
	head, body, _ := strings.Cut(s, "\r\n\r\n")
	ls := strings.Split(head, "\r\n")
	if len(ls) < 2 {
		return nil, false
	}
	m := &sipMsg{first: ls[0], body: body}
	for _, l := range ls[1:] {
		if (strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t")) && len(m.lines) > 0 {
			m.lines[len(m.lines)-1] += " " + strings.TrimSpace(l)
			continue
		}
		m.lines = append(m.lines, l)
	}
	return m, true
}

// header returns the first value of a header (case-insensitive, compact forms understood).
func (m *sipMsg) header(name string) string {
	for _, l := range m.lines {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		k = strings.ToLower(strings.TrimSpace(k))
		if c, ok := compact[k]; ok {
			k = c
		}
		if k == name {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// status returns the response code, or 0 for a request.
func (m *sipMsg) status() int {
	if !strings.HasPrefix(m.first, "SIP/2.0 ") || len(m.first) < 11 {
		return 0
	}
	n, _ := strconv.Atoi(m.first[8:11])
	return n
}

func newUAC(target, user string) (*uac, error) {
	dst, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		return nil, fmt.Errorf("loadtest: sip target %q: %w", target, err)
	}
	probe, err := net.DialUDP("udp", nil, dst) // learn the local address that reaches the target
	if err != nil {
		return nil, fmt.Errorf("loadtest: sip target %q: %w", target, err)
	}
	ip := probe.LocalAddr().(*net.UDPAddr).IP
	probe.Close()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip})
	if err != nil {
		return nil, err
	}
	_ = conn.SetReadBuffer(4 << 20)
	u := &uac{conn: conn, dst: dst, local: conn.LocalAddr().String(), user: user, waits: map[string]chan *sipMsg{}, byes: map[string]func(){},
		done: make(chan struct{})}
	u.wg.Add(1)
	go u.read()
	return u, nil
}

func (u *uac) close() {
	close(u.done)
	u.conn.Close()
	u.wg.Wait()
}

func (u *uac) ip() string { return u.conn.LocalAddr().(*net.UDPAddr).IP.String() }

func (u *uac) read() {
	defer u.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, _, err := u.conn.ReadFromUDP(buf)
		if err != nil {
			return
		}
		m, ok := parseSIP(buf[:n])
		if !ok {
			continue
		}
		callID := m.header("call-id")
		if m.status() == 0 {
			u.onRequest(m, callID)
			continue
		}
		num, method, _ := strings.Cut(m.header("cseq"), " ")
		u.mu.Lock()
		ch := u.waits[callID+" "+strings.TrimSpace(num)+" "+strings.TrimSpace(method)]
		u.mu.Unlock()
		if ch != nil {
			select {
			case ch <- m:
			default:
			}
		}
	}
}

// onRequest answers what the server sends: a BYE (the server hung up) or anything else, 200.
func (u *uac) onRequest(m *sipMsg, callID string) {
	method, _, _ := strings.Cut(m.first, " ")
	var b strings.Builder
	b.WriteString("SIP/2.0 200 OK\r\n")
	for _, l := range m.lines {
		k, _, _ := strings.Cut(l, ":")
		switch k = strings.ToLower(strings.TrimSpace(k)); compactOr(k) {
		case "via", "from", "to", "call-id", "cseq":
			b.WriteString(l + "\r\n")
		}
	}
	b.WriteString("Content-Length: 0\r\n\r\n")
	_, _ = u.conn.WriteToUDP([]byte(b.String()), u.dst)
	if method == "BYE" {
		u.mu.Lock()
		f := u.byes[callID]
		delete(u.byes, callID)
		u.mu.Unlock()
		if f != nil {
			f()
		}
	}
}

func compactOr(k string) string {
	if c, ok := compact[k]; ok {
		return c
	}
	return k
}

// sipDialog is what a call needs to send in-dialog requests.
type sipDialog struct {
	callID, fromTag, toTag string
	cseq                   int
}

func (u *uac) build(method string, d *sipDialog, cseq int, extra, ctype, body string) []byte {
	to := "<sip:" + u.user + "@" + u.dst.String() + ">"
	if d.toTag != "" {
		to += ";tag=" + d.toTag
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s sip:%s@%s SIP/2.0\r\nVia: SIP/2.0/UDP %s;rport;branch=z9hG4bK%x\r\n"+
		"From: <sip:loadtest@%s>;tag=%s\r\nTo: %s\r\nCall-ID: %s\r\nCSeq: %d %s\r\nContact: <sip:loadtest@%s>\r\n"+
		"Max-Forwards: 70\r\nUser-Agent: callrouter-loadtest\r\n%s",
		method, u.user, u.dst, u.local, rand.Uint64(), u.ip(), d.fromTag, to, d.callID, cseq, method, u.local, extra)
	if body != "" {
		b.WriteString("Content-Type: " + ctype + "\r\n")
	}
	fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(body), body)
	return []byte(b.String())
}

// transact sends a request and returns its final response, retransmitting it on UDP (Timer A,
// doubling from 500 ms, capped at 4 s) until a provisional or final response arrives.
func (u *uac) transact(ctx context.Context, method string, d *sipDialog, cseq int, msg []byte) (*sipMsg, error) {
	key := fmt.Sprintf("%s %d %s", d.callID, cseq, method)
	ch := make(chan *sipMsg, 8)
	u.mu.Lock()
	u.waits[key] = ch
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		delete(u.waits, key)
		u.mu.Unlock()
	}()
	if _, err := u.conn.WriteToUDP(msg, u.dst); err != nil {
		return nil, err
	}
	t1 := 500 * time.Millisecond
	timer := time.NewTimer(t1)
	defer timer.Stop()
	provisional := false
	for {
		select {
		case m := <-ch:
			if m.status() < 200 {
				provisional = true
				continue
			}
			return m, nil
		case <-timer.C:
			if !provisional {
				_, _ = u.conn.WriteToUDP(msg, u.dst)
			}
			t1 = min(2*t1, 4*time.Second)
			timer.Reset(t1)
		case <-ctx.Done():
			return nil, fmt.Errorf("loadtest: %s %s: no final response: %w", method, d.callID, ctx.Err())
		case <-u.done:
			return nil, errors.New("loadtest: sip client closed")
		}
	}
}

// invite places a call: INVITE with the offer, ACK on 200, and returns the answer's SDP. A 503
// or 486 is a *RefusedError carrying Retry-After.
func (u *uac) invite(ctx context.Context, d *sipDialog, extra, ctype, body string, onBye func()) (string, error) {
	u.mu.Lock()
	u.byes[d.callID] = onBye
	u.mu.Unlock()
	d.cseq = 1
	res, err := u.transact(ctx, "INVITE", d, 1, u.build("INVITE", d, 1, extra, ctype, body))
	if err != nil {
		u.forget(d.callID)
		return "", err
	}
	code := res.status()
	if code >= 300 {
		u.forget(d.callID)
		reason := strings.TrimSpace(res.first[min(len(res.first), 11):])
		if code == 503 || code == 486 || code == 480 {
			ra, _ := strconv.Atoi(strings.Fields(res.header("retry-after") + " 1")[0])
			return "", &RefusedError{Code: strconv.Itoa(code), Reason: reason, RetryAfter: time.Duration(max(ra, 1)) * time.Second}
		}
		return "", fmt.Errorf("loadtest: INVITE %s: %d %s", d.callID, code, reason)
	}
	if _, tag, ok := strings.Cut(res.header("to"), ";tag="); ok {
		d.toTag, _, _ = strings.Cut(tag, ";")
	}
	_, _ = u.conn.WriteToUDP(u.build("ACK", d, 1, "", "", ""), u.dst)
	return res.body, nil
}

func (u *uac) forget(callID string) {
	u.mu.Lock()
	delete(u.byes, callID)
	u.mu.Unlock()
}

// bye hangs a call up.
func (u *uac) bye(ctx context.Context, d *sipDialog) error {
	u.forget(d.callID)
	d.cseq++
	res, err := u.transact(ctx, "BYE", d, d.cseq, u.build("BYE", d, d.cseq, "", "", ""))
	if err != nil {
		return err
	}
	if c := res.status(); c >= 300 && c != 481 {
		return fmt.Errorf("loadtest: BYE %s: %s", d.callID, res.first)
	}
	return nil
}

// answerPorts returns the address of each m= line of an SDP answer (RFC 4566), in order.
func answerPorts(sdp string) ([]*net.UDPAddr, error) {
	var (
		sessIP string
		out    []*net.UDPAddr
	)
	for _, l := range strings.Split(strings.ReplaceAll(sdp, "\r\n", "\n"), "\n") {
		switch {
		case strings.HasPrefix(l, "c=IN IP4 "), strings.HasPrefix(l, "c=IN IP6 "):
			ip := strings.Fields(l[9:])
			if len(ip) == 0 {
				continue
			}
			if len(out) == 0 {
				sessIP = ip[0]
			} else {
				out[len(out)-1].IP = net.ParseIP(ip[0])
			}
		case strings.HasPrefix(l, "m=audio "):
			f := strings.Fields(l)
			if len(f) < 2 {
				return nil, fmt.Errorf("loadtest: bad answer media line %q", l)
			}
			port, err := strconv.Atoi(f[1])
			if err != nil || port <= 0 || port > 65535 {
				return nil, fmt.Errorf("loadtest: bad answer media line %q", l)
			}
			out = append(out, &net.UDPAddr{IP: net.ParseIP(sessIP), Port: port})
		}
	}
	for _, a := range out {
		if a.IP == nil {
			return nil, errors.New("loadtest: answer has no connection address")
		}
	}
	if len(out) == 0 {
		return nil, errors.New("loadtest: answer has no audio stream")
	}
	return out, nil
}
