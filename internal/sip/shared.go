package sip

import (
	"net/netip"
	"sync"
	"time"
)

// The shared RTP port (Config.RTPShared): every call's SDP answer names one port, and the
// packets that arrive on it are demultiplexed to their stream by their source address and port,
// which must be the one the stream's SDP offer (or a re-INVITE) declared, and then by SSRC:
// a stream takes the SSRC of its first accepted packet and from then on accepts only that SSRC,
// until it has been silent for ssrcHold (a sender that changes SSRC, as the per-port mode
// allows, is followed after that pause). A packet whose source no stream declared, or whose
// SSRC no stream of its source takes, is counted (callrouter_sip_rtp_dropped_total, reason
// "source" or "ssrc") and dropped; it never reaches another call. Many streams on one socket
// let a reader take many packets per system call (recvmmsg, shared_linux.go).

// ssrcHold is how long a stream's latched SSRC must have been silent before a packet from the
// stream's source with another SSRC takes its place.
const ssrcHold = 3 * frameDur

// sharedRTP is the demultiplexing table of the shared port: the streams by declared source.
type sharedRTP struct {
	port   int
	m      *metrics
	socks  sharedSocks // the sockets and their readers (shared_linux.go)
	rcvbuf int         // the receive buffer each socket got, in bytes

	mu     sync.RWMutex
	routes map[netip.AddrPort][]*sharedEntry // copy on write: readers use a slice after RUnlock
	sweeps [][]*sharedEntry                  // by reader: the streams whose silence filling it runs
	next   int
}

// sharedEntry is one stream's place in the table.
type sharedEntry struct {
	rtp    *sharedRTP
	s      *stream
	key    netip.AddrPort // rtp.mu
	gone   bool           // rtp.mu: out of the table for good
	reader int            // the reader that sweeps it

	mu      sync.Mutex
	active  bool // served: packets are handled once the stream's call is placed
	closed  bool
	latched bool
	ssrc    uint32
	last    int64 // unix nanos of the last packet routed to it
	done    chan struct{}
	once    sync.Once
	panic   *any
}

func newSharedRTP(port, readers int, m *metrics) *sharedRTP {
	return &sharedRTP{port: port, m: m, routes: map[netip.AddrPort][]*sharedEntry{}, sweeps: make([][]*sharedEntry, readers)}
}

// add registers s under its declared source; its packets are dropped until activate.
func (r *sharedRTP) add(s *stream, from netip.AddrPort) *sharedEntry {
	from = netipAddrPort(from.Addr(), int(from.Port()))
	e := &sharedEntry{rtp: r, s: s, key: from, done: make(chan struct{})}
	r.mu.Lock()
	defer r.mu.Unlock()
	e.reader = r.next % len(r.sweeps)
	r.next++
	r.routes[from] = append(r.routes[from][:len(r.routes[from]):len(r.routes[from])], e)
	r.sweeps[e.reader] = append(r.sweeps[e.reader][:len(r.sweeps[e.reader]):len(r.sweeps[e.reader])], e)
	return e
}

// without returns es without e, as a new slice.
func without(es []*sharedEntry, e *sharedEntry) []*sharedEntry {
	out := make([]*sharedEntry, 0, len(es))
	for _, x := range es {
		if x != e {
			out = append(out, x)
		}
	}
	return out
}

// remove takes e out of the table; it may be called more than once.
func (r *sharedRTP) remove(e *sharedEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e.gone {
		return
	}
	e.gone = true
	r.unroute(e)
	r.sweeps[e.reader] = without(r.sweeps[e.reader], e)
}

func (r *sharedRTP) unroute(e *sharedEntry) {
	es := without(r.routes[e.key], e)
	if len(es) == 0 {
		delete(r.routes, e.key)
	} else {
		r.routes[e.key] = es
	}
}

// rekey moves e to a new declared source (a re-INVITE); a new source is a new sender, so the
// SSRC latch starts over.
func (r *sharedRTP) rekey(e *sharedEntry, from netip.AddrPort) {
	from = netipAddrPort(from.Addr(), int(from.Port()))
	r.mu.Lock()
	if e.key == from || e.gone { // a re-INVITE that crossed the call's end
		r.mu.Unlock()
		return
	}
	r.unroute(e)
	e.key = from
	r.routes[from] = append(r.routes[from][:len(r.routes[from]):len(r.routes[from])], e)
	r.mu.Unlock()
	e.mu.Lock()
	e.latched = false
	e.mu.Unlock()
}

// deliver routes one datagram that arrived at now from from; raw is the reader's buffer.
func (r *sharedRTP) deliver(now time.Time, from netip.AddrPort, raw []byte) {
	if len(raw) < 12 {
		r.m.rtpDropped.WithLabelValues("malformed").Inc()
		return
	}
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	r.mu.RLock()
	es := r.routes[from]
	r.mu.RUnlock()
	if len(es) == 0 {
		r.m.rtpDropped.WithLabelValues("source").Inc()
		return
	}
	ssrc := uint32(raw[8])<<24 | uint32(raw[9])<<16 | uint32(raw[10])<<8 | uint32(raw[11])
	t := now.UnixNano()
	for _, e := range es { // the stream that took this SSRC
		e.mu.Lock()
		if e.active && !e.closed && e.latched && e.ssrc == ssrc {
			e.last = t
			e.handle(now, raw)
			e.mu.Unlock()
			return
		}
		e.mu.Unlock()
	}
	for _, e := range es { // else the first stream of this source free to take it
		e.mu.Lock()
		if e.active && !e.closed && (!e.latched || t-e.last >= int64(ssrcHold)) {
			e.latched, e.ssrc, e.last = true, ssrc, t
			e.handle(now, raw)
			e.mu.Unlock()
			return
		}
		e.mu.Unlock()
	}
	r.m.rtpDropped.WithLabelValues("ssrc").Inc()
}

// sweep runs the silence filling of reader i's streams; a stream not due (stream.idle) is
// skipped without its lock.
func (r *sharedRTP) sweep(i int, now time.Time) {
	r.mu.RLock()
	es := r.sweeps[i]
	r.mu.RUnlock()
	mono := monoNanos(now)
	for _, e := range es {
		if mono < e.s.idleDue.Load() {
			continue
		}
		e.mu.Lock()
		if e.active && !e.closed {
			e.idle(now)
		}
		e.mu.Unlock()
	}
}

// handle and idle run the stream's code with e.mu held; a panic ends this stream alone (serve
// raises it again on the stream's goroutine).
func (e *sharedEntry) handle(now time.Time, raw []byte) {
	defer e.recover()
	if e.s.hook != nil {
		(*e.s.hook)(raw)
	}
	e.s.accept(now, raw) // deliver routed it by its source: the stream's declared one
}

func (e *sharedEntry) idle(now time.Time) {
	defer e.recover()
	e.s.idle(now)
}

func (e *sharedEntry) recover() {
	if v := recover(); v != nil {
		p := v // escapes: allocated on a panic only
		e.panic = &p
		e.end()
	}
}

// end stops routing to e (with e.mu held).
func (e *sharedEntry) end() {
	e.closed = true
	e.once.Do(func() { close(e.done) })
}

// activate lets packets through to the stream (its send callback is set).
func (e *sharedEntry) activate() {
	e.mu.Lock()
	e.active = true
	e.mu.Unlock()
}

// The stream's transport (stream.go): its place on the shared port.

func (e *sharedEntry) localPort() int            { return e.rtp.port }
func (e *sharedEntry) rekey(from netip.AddrPort) { e.rtp.rekey(e, from) }
func (e *sharedEntry) stop()                     { e.close() }
func (e *sharedEntry) release(*portPool)         { e.close() }

// serve waits until close (or a panic in the stream's handling, which it raises again).
func (e *sharedEntry) serve(*stream) {
	<-e.done
	e.mu.Lock()
	p := e.panic
	e.mu.Unlock()
	if p != nil {
		panic(*p)
	}
}

// close takes e out of the table; once it returns no reader touches the stream. It may be
// called more than once.
func (e *sharedEntry) close() {
	e.rtp.remove(e)
	e.mu.Lock()
	e.end()
	e.mu.Unlock()
}
