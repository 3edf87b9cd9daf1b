package sip

import (
	"errors"
	"net/netip"
	"sync"
	"time"
)

// ErrNoPorts means every RTP port of the range is in use or in quarantine.
var ErrNoPorts = errors.New("sip: no free RTP port")

// portPool hands out even RTP ports of a range, least recently released first, and holds a
// released port back for a quarantine so that stray packets of an old call never land in a new
// one. A port another process holds is skipped and retried later.
type portPool struct {
	ip         netip.Addr
	quarantine time.Duration
	now        func() time.Time
	pollers    *rtpPollers

	mu    sync.Mutex
	free  []freePort // FIFO by release time
	inUse int
}

type freePort struct {
	port     int
	released time.Time
}

func newPortPool(ip netip.Addr, lo, hi int, quarantine time.Duration) *portPool {
	p := &portPool{ip: ip, quarantine: quarantine, now: time.Now, pollers: newRTPPollers()}
	if lo%2 == 1 {
		lo++
	}
	for port := lo; port+1 <= hi; port += 2 {
		p.free = append(p.free, freePort{port: port})
	}
	return p
}

// open binds a UDP socket on the oldest port out of quarantine.
func (p *portPool) open() (*rtpConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	for tries := 0; tries < len(p.free) && tries < 64; tries++ {
		f := p.free[0]
		if now.Sub(f.released) < p.quarantine && !f.released.IsZero() {
			return nil, ErrNoPorts // the oldest is still in quarantine, so are the rest
		}
		p.free = p.free[1:]
		c, err := listenRTP(p.ip, f.port, p.pollers)
		if err != nil {
			p.free = append(p.free, freePort{port: f.port, released: now}) // someone else holds it
			continue
		}
		p.inUse++
		return c, nil
	}
	return nil, ErrNoPorts
}

// release closes the socket and puts its port in quarantine.
func (p *portPool) release(c *rtpConn) {
	port := c.port
	_ = c.Close()
	p.mu.Lock()
	p.free = append(p.free, freePort{port: port, released: p.now()})
	p.inUse--
	p.mu.Unlock()
}

// stats returns the ports in use and the ports free (including those in quarantine).
func (p *portPool) stats() (inUse, free int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.inUse, len(p.free)
}

// The stream's transport (stream.go): a port of its own, read by rtpConn.serve.

func (c *rtpConn) localPort() int       { return c.port }
func (c *rtpConn) rekey(netip.AddrPort) {} // the source check reads the stream's remote
func (c *rtpConn) activate()            {} // packets queue in the socket until serve
func (c *rtpConn) stop()                { _ = c.Close() }
func (c *rtpConn) release(p *portPool)  { p.release(c) }
