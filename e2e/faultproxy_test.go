package e2e

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// faultProxy is a TCP proxy between one component and nats-server that can cut the connection
// (and refuse new ones), blackhole it (read everything, forward nothing, keep it open) and delay
// it (every byte forwarded after a fixed delay, in order). Point the component's -nats at url().
type faultProxy struct {
	t      *testing.T
	ln     net.Listener
	target string

	mu       sync.Mutex
	refuse   bool
	delay    time.Duration
	accepted int // connections forwarded so far
	conns    map[*proxied]struct{}
	closed   bool
	wg       sync.WaitGroup
}

// proxied is one client connection and its upstream.
type proxied struct {
	client, server net.Conn
	mu             sync.Mutex
	blackholed     bool
}

func (c *proxied) close() {
	c.client.Close()
	c.server.Close()
}

func newFaultProxy(t *testing.T, target string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{t: t, ln: ln, target: target, conns: map[*proxied]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *faultProxy) url() string { return "nats://" + p.ln.Addr().String() }

func (p *faultProxy) accept() {
	defer p.wg.Done()
	for {
		cl, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.refuse || p.closed {
			p.mu.Unlock()
			cl.Close()
			continue
		}
		p.mu.Unlock()
		sv, err := net.DialTimeout("tcp", p.target, 2*time.Second)
		if err != nil {
			cl.Close()
			continue
		}
		c := &proxied{client: cl, server: sv}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.close()
			continue
		}
		p.conns[c] = struct{}{}
		p.accepted++
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pipe(c, cl, sv)
		go p.pipe(c, sv, cl)
	}
}

// chunk is data read at a time, forwarded at due.
type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies src to dst through a bounded queue that holds each chunk until its due time; a
// blackholed connection's chunks are dropped. Either side failing closes both.
func (p *faultProxy) pipe(c *proxied, src, dst net.Conn) {
	defer p.wg.Done()
	q := make(chan chunk, 4096)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ch := range q {
			if d := time.Until(ch.due); d > 0 {
				time.Sleep(d)
			}
			if _, err := dst.Write(ch.b); err != nil {
				c.close()
				for range q { // drain so the reader never blocks
				}
				return
			}
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			c.mu.Lock()
			hole := c.blackholed
			c.mu.Unlock()
			if !hole {
				p.mu.Lock()
				d := p.delay
				p.mu.Unlock()
				q <- chunk{b: append([]byte(nil), buf[:n]...), due: time.Now().Add(d)}
			}
		}
		if err != nil {
			break
		}
	}
	close(q)
	<-done
	c.close()
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// cut closes every current connection, and refuses new ones until heal.
func (p *faultProxy) cut() {
	p.mu.Lock()
	p.refuse = true
	cs := make([]*proxied, 0, len(p.conns))
	for c := range p.conns {
		cs = append(cs, c)
	}
	p.mu.Unlock()
	for _, c := range cs {
		c.close()
	}
}

// heal accepts new connections again.
func (p *faultProxy) heal() {
	p.mu.Lock()
	p.refuse = false
	p.mu.Unlock()
}

// blackhole makes every current connection swallow what either side sends, without closing it;
// new connections pass normally.
func (p *faultProxy) blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.mu.Lock()
		c.blackholed = true
		c.mu.Unlock()
	}
}

// setDelay delays every byte read from now on, in both directions, by d.
func (p *faultProxy) setDelay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

func (p *faultProxy) acceptedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

func (p *faultProxy) close() {
	p.mu.Lock()
	p.closed = true
	cs := make([]*proxied, 0, len(p.conns))
	for c := range p.conns {
		cs = append(cs, c)
	}
	p.mu.Unlock()
	p.ln.Close()
	for _, c := range cs {
		c.close()
	}
	p.wg.Wait()
}

// TestFaultProxy checks the proxy itself against an echo server: it forwards, delays by at least
// the delay, blackholes without closing, and cuts and refuses.
func TestFaultProxy(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var ewg sync.WaitGroup
	defer func() { echo.Close(); ewg.Wait() }()
	ewg.Add(1)
	go func() {
		defer ewg.Done()
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			ewg.Add(1)
			go func() { defer ewg.Done(); _, _ = io.Copy(c, c); c.Close() }()
		}
	}()
	p := newFaultProxy(t, echo.Addr().String())
	dial := func() net.Conn {
		c, err := net.Dial("tcp", p.ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	roundTrip := func(c net.Conn, msg string, wait time.Duration) (string, error) {
		if _, err := c.Write([]byte(msg)); err != nil {
			return "", err
		}
		_ = c.SetReadDeadline(time.Now().Add(wait))
		b := make([]byte, len(msg))
		_, err := io.ReadFull(c, b)
		return string(b), err
	}
	c := dial()
	defer c.Close()
	if got, err := roundTrip(c, "hello", 5*time.Second); err != nil || got != "hello" {
		t.Fatalf("pass: %q %v", got, err)
	}
	p.setDelay(200 * time.Millisecond)
	t0 := time.Now()
	if got, err := roundTrip(c, "later", 5*time.Second); err != nil || got != "later" {
		t.Fatalf("delay: %q %v", got, err)
	}
	if took := time.Since(t0); took < 400*time.Millisecond {
		t.Errorf("round trip with 200 ms each way took %v", took)
	}
	p.setDelay(0)
	p.blackhole()
	if got, err := roundTrip(c, "void", 500*time.Millisecond); err == nil {
		t.Errorf("blackholed connection answered %q", got)
	}
	if _, err := c.Write([]byte("still open")); err != nil {
		t.Errorf("blackholed connection refused a write: %v", err)
	}
	c2 := dial()
	defer c2.Close()
	if got, err := roundTrip(c2, "fresh", 5*time.Second); err != nil || got != "fresh" {
		t.Fatalf("a new connection after a blackhole: %q %v", got, err)
	}
	p.cut()
	_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c2.Read(make([]byte, 1)); err == nil {
		t.Error("cut connection still reads")
	}
	c3 := dial()
	_ = c3.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c3.Read(make([]byte, 1)); err == nil {
		t.Error("a connection made while cut was not refused")
	}
	c3.Close()
	p.heal()
	c4 := dial()
	defer c4.Close()
	if got, err := roundTrip(c4, "healed", 5*time.Second); err != nil || got != "healed" {
		t.Fatalf("after heal: %q %v", got, err)
	}
}
