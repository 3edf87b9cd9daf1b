package obs

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func serve(t *testing.T, l Limits) *Server {
	t.Helper()
	var h Health
	h.SetLive(true)
	s, err := ListenLimits("127.0.0.1:0", &h, prometheus.NewRegistry(), l)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return s
}

// closedWithin reports whether the server closes c within d (reading whatever it sends first).
func closedWithin(c net.Conn, d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	return err == nil || !(errors.As(err, &ne) && ne.Timeout())
}

// TestSlowClientsAreCut holds connections the way slowloris does: headers dripped, a body that
// never finishes, an idle keep-alive connection. Each is closed by the server's timeouts.
func TestSlowClientsAreCut(t *testing.T) {
	l := DefaultLimits()
	l.ReadHeaderTimeout, l.ReadTimeout, l.IdleTimeout = 300*time.Millisecond, 600*time.Millisecond, 600*time.Millisecond
	s := serve(t, l)
	dial := func() net.Conn {
		c, err := net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	for name, open := range map[string]func(c net.Conn){
		"headers never end": func(c net.Conn) { _, _ = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n") },
		"body never ends": func(c net.Conn) {
			_, _ = io.WriteString(c, "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc")
		},
		"idle keep-alive": func(c net.Conn) {
			_, _ = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
			res, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil || res.StatusCode != 200 {
				t.Fatalf("keep-alive request: %v", err)
			}
		},
	} {
		c := dial()
		open(c)
		if !closedWithin(c, 10*time.Second) {
			t.Errorf("%s: the connection is still open after 10 s", name)
		}
	}
}

// TestConnectionCap holds MaxConns connections open: the next one is not served until one of them
// closes.
func TestConnectionCap(t *testing.T) {
	l := DefaultLimits()
	l.MaxConns, l.MaxConnsPerSource = 4, 0
	s := serve(t, l)
	var held []net.Conn
	for i := 0; i < l.MaxConns; i++ {
		c, err := net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _ = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		if res, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || res.StatusCode != 200 {
			t.Fatalf("connection %d: %v", i, err)
		}
		held = append(held, c)
	}
	got := make(chan string, 1)
	go func() {
		c := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		res, err := c.Get("http://" + s.Addr() + "/healthz")
		if err != nil {
			got <- err.Error()
			return
		}
		res.Body.Close()
		got <- res.Status
	}()
	select {
	case r := <-got:
		t.Fatalf("a connection past the cap was served: %s", r)
	case <-time.After(500 * time.Millisecond):
	}
	held[0].Close()
	select {
	case r := <-got:
		if !strings.HasPrefix(r, "200") {
			t.Fatalf("after a slot freed: %s", r)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the waiting connection was not served after a slot freed")
	}
}

// TestConnectionCapPerSource holds MaxConnsPerSource connections from 127.0.0.2: its next one is
// closed at once while a client at 127.0.0.1 is still served.
func TestConnectionCapPerSource(t *testing.T) {
	l := DefaultLimits()
	l.MaxConnsPerSource = 3
	s := serve(t, l)
	dialFrom := func(ip net.IP) net.Conn {
		c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}}).Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	src := net.IPv4(127, 0, 0, 2)
	for i := 0; i < l.MaxConnsPerSource; i++ {
		c := dialFrom(src)
		_, _ = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		if res, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || res.StatusCode != 200 {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	if !closedWithin(dialFrom(src), 5*time.Second) {
		t.Error("a connection past the per-source cap was kept open")
	}
	c := dialFrom(net.IPv4(127, 0, 0, 1))
	_, _ = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	if res, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("another source while one is at its cap: %v", err)
	}
}
