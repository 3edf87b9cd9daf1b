package hostile

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

const validOffer = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n" +
	"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n" +
	"a=ice-ufrag:hstl\r\na=ice-pwd:hostilehostilehostilehost\r\n" +
	"a=fingerprint:sha-256 0F:74:31:25:CB:A2:13:EC:28:6F:6D:2C:61:FF:5D:C2:BC:B9:DB:3D:98:14:8D:1A:BB:EA:33:0C:A4:60:A8:8E\r\n" +
	"a=setup:actpass\r\na=mid:0\r\na=sendonly\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n"

// postFlood sends n POSTs to the WHIP endpoint from 16 connections and counts the answers. The
// sessions it creates are returned (their URLs), for the caller to delete.
func (s *suite) postFlood(n int, token, body string) (got map[int]int, failed int, sessions []string) {
	url := "http://" + s.n.whipAddr + "/whip"
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	defer client.CloseIdleConnections()
	var mu sync.Mutex
	got = map[int]int{}
	work := make(chan struct{}, n)
	for i := 0; i < n; i++ {
		work <- struct{}{}
	}
	close(work)
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
				req.Header.Set("Content-Type", "application/sdp")
				req.Header.Set("Authorization", "Bearer "+token)
				resp, err := client.Do(req)
				mu.Lock()
				if err != nil {
					failed++
				} else {
					got[resp.StatusCode]++
				}
				mu.Unlock()
				if err == nil {
					if loc := resp.Header.Get("Location"); resp.StatusCode == http.StatusCreated && loc != "" {
						mu.Lock()
						sessions = append(sessions, loc)
						mu.Unlock()
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	wg.Wait()
	return got, failed, sessions
}

// deleteSessions ends WHIP sessions.
func (s *suite) deleteSessions(token string, sessions []string) {
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	for _, loc := range sessions {
		del, _ := http.NewRequest(http.MethodDelete, "http://"+s.n.whipAddr+loc, nil)
		del.Header.Set("Authorization", "Bearer "+token)
		if resp, err := client.Do(del); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
}

// whipBadToken floods the WHIP endpoint with POSTs carrying a valid offer and an unknown token.
func (s *suite) whipBadToken(t *testing.T, r *row) {
	const n = 1000
	got, failed, sessions := s.postFlood(n, "not-a-token-of-anyone", validOffer)
	s.deleteSessions(whipToken, sessions)
	r.didf("%d POSTs with a valid offer and an unknown token: %s, %d failed", n, codes(got), failed)
	for code, c := range got {
		if code != http.StatusUnauthorized && code != http.StatusTooManyRequests && code != http.StatusServiceUnavailable {
			r.failf("%d answered %d, want 401, 429 or 503", c, code)
		}
	}
}

// whipJunk floods the WHIP endpoint with POSTs carrying a good token and junk SDP.
func (s *suite) whipJunk(t *testing.T, r *row) {
	const n = 1000
	junk := "v=0\r\nm=audio junk\r\n" + strings.Repeat("a=x\r\n", 2000)
	got, failed, sessions := s.postFlood(n, whipToken, junk)
	s.deleteSessions(whipToken, sessions)
	r.didf("%d POSTs with a good token and %d bytes of junk SDP: %s, %d failed", n, len(junk), codes(got), failed)
	for code, c := range got {
		if code != http.StatusBadRequest && code != http.StatusTooManyRequests && code != http.StatusServiceUnavailable {
			r.failf("%d answered %d, want 400, 429 or 503", c, code)
		}
	}
}

// whipValid sends 300 valid offers with a good token from one source in a burst and keeps the
// sessions (they never connect): the per-source and per-tenant bounds must refuse most of them.
// The sessions are deleted at the end of the row.
func (s *suite) whipValid(t *testing.T, r *row) {
	const n, bound = 300, 100
	got, failed, sessions := s.postFlood(n, whipToken, validOffer)
	s.deleteSessions(whipToken, sessions)
	r.didf("%d POSTs with a good token and a valid offer, sessions kept: %s, %d failed", n, codes(got), failed)
	if got[http.StatusCreated] > bound {
		r.failf("%d of %d offers from one source in a burst were accepted, want ≤ %d (bounded per source and tenant)", got[http.StatusCreated], n, bound)
	}
	if !eventually(20*time.Second, func() bool { return s.n.metric("callrouter_ingest_calls") <= victimCalls }) {
		r.didf("%.0f calls still up 20 s later", s.n.metric("callrouter_ingest_calls"))
	}
}

// whipOversized sends a 10 MB body: the node must answer 413 without reading it all.
func (s *suite) whipOversized(t *testing.T, r *row) {
	const size = 10 << 20
	conn, err := net.DialTimeout("tcp", s.n.whipAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(conn, "POST /whip HTTP/1.1\r\nHost: %s\r\nContent-Type: application/sdp\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n", s.n.whipAddr, whipToken, size)
	var written int64
	var wmu sync.Mutex
	go func() {
		chunk := make([]byte, 64<<10)
		for i := 0; i < size/len(chunk); i++ {
			if _, err := conn.Write(chunk); err != nil {
				return
			}
			wmu.Lock()
			written += int64(len(chunk))
			wmu.Unlock()
		}
	}()
	t0 := time.Now()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	took := time.Since(t0)
	if err != nil {
		r.failf("no answer to a 10 MB body: %v", err)
		return
	}
	resp.Body.Close()
	wmu.Lock()
	sent := written
	wmu.Unlock()
	r.didf("10 MB body: %d after %v, having taken %d KB", resp.StatusCode, took.Round(time.Millisecond), sent>>10)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		r.failf("answered %d to a 10 MB body, want 413", resp.StatusCode)
	}
}

// slowloris opens 200 connections to the ingest's HTTP server: 100 send their headers one byte a
// second, 100 send full headers of a POST and then its body one byte a second. The node must close
// them all within 40 s (a 30 s read timeout passes) and keep answering /healthz. In the same
// window 1,000 TCP connections to the SIP port from one source send nothing: a per-source cap or
// an idle timeout must have closed some of them.
func (s *suite) slowloris(t *testing.T, r *row) {
	const perKind, bound = 100, 40 * time.Second
	type slow struct {
		conn   net.Conn
		body   bool
		closed chan time.Time
	}
	var conns, sipConns []*slow
	defer func() {
		for _, c := range append(conns, sipConns...) {
			c.conn.Close()
		}
		for _, c := range append(conns, sipConns...) {
			<-c.closed
		}
	}()
	watch := func(conn net.Conn) *slow {
		c := &slow{conn: conn, closed: make(chan time.Time, 1)}
		go func() {
			_, _ = io.Copy(io.Discard, conn) // returns when the node closes it (or we do)
			c.closed <- time.Now()
		}()
		return c
	}
	t0 := time.Now()
	const idleSIP = 1000
	sipRefused := 0
	for i := 0; i < idleSIP; i++ {
		if time.Since(t0) > 5*time.Second {
			sipRefused += idleSIP - i // not accepted in time: as good as refused
			break
		}
		conn, err := net.DialTimeout("tcp", s.n.sip.String(), 500*time.Millisecond)
		if err != nil {
			sipRefused++
			continue
		}
		sipConns = append(sipConns, watch(conn))
	}
	for i := 0; i < 2*perKind; i++ {
		conn, err := net.DialTimeout("tcp", s.n.whipAddr, 5*time.Second)
		if err != nil {
			r.failf("connection %d refused: %v", i, err)
			break
		}
		c := watch(conn)
		c.body = i%2 == 1
		conns = append(conns, c)
		if c.body {
			fmt.Fprintf(conn, "POST /whip HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\nAuthorization: Bearer %s\r\nContent-Length: 100000\r\n\r\n", whipToken)
		} else {
			fmt.Fprintf(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
		}
	}
	sipOpen := func() int {
		n := 0
		for _, c := range sipConns {
			select {
			case at := <-c.closed:
				c.closed <- at
			default:
				n++
			}
		}
		return n
	}
	closedAt := map[*slow]time.Duration{}
	healthFails := 0
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for time.Since(t0) < bound && (len(closedAt) < len(conns) || sipOpen() == idleSIP) {
		<-tick.C
		for _, c := range conns {
			if _, done := closedAt[c]; done {
				continue
			}
			select {
			case at := <-c.closed:
				closedAt[c] = at.Sub(t0)
				c.closed <- at
				continue
			default:
			}
			_ = c.conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			_, _ = c.conn.Write([]byte("a"))
		}
		if !healthz(s.n.httpAddr, 2*time.Second) {
			healthFails++
		}
	}
	var openHead, openBody int
	var last time.Duration
	for _, c := range conns {
		d, ok := closedAt[c]
		switch {
		case !ok && c.body:
			openBody++
		case !ok:
			openHead++
		case d > last:
			last = d
		}
	}
	r.didf("%d slow connections: header dribblers still open after %v: %d, body dribblers: %d (the last closed one after %v); /healthz failed %d times meanwhile",
		len(conns), bound, openHead, openBody, last.Round(100*time.Millisecond), healthFails)
	open := sipOpen()
	r.didf("%d idle SIP TCP connections from one source: %d refused, %d still open after %v", idleSIP, sipRefused, open, time.Since(t0).Round(time.Second))
	if open == idleSIP {
		r.failf("all %d idle SIP TCP connections from one source still open after %v: no per-source cap, no idle timeout", idleSIP, time.Since(t0).Round(time.Second))
	}
	if openHead+openBody > 0 {
		r.failf("%d of %d slow connections still open after %v", openHead+openBody, len(conns), bound)
	}
	if healthFails > 0 {
		r.failf("/healthz failed %d times during the slowloris", healthFails)
	}
}
