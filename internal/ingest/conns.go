package ingest

import (
	"errors"
	"fmt"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

// flushTimeout bounds the wait for a call's frames to reach the server before a message that
// must not overtake them goes out on another connection (a replay answer).
const flushTimeout = time.Second

// pubConn is one of the connections the node publishes frames on: its own (the first) or one
// of the extra ones it opened (Config.PublishConns).
type pubConn struct {
	nc    *nats.Conn
	calls int       // calls owned on it; under Node.mu
	seen  time.Time // when the absence check last saw it connected (monotonic); the Run loop's
	lost  time.Time // when the absence check first saw it away, zero while connected; the Run loop's
}

// dialPublishConns opens, with Deps.Dial, the extra publishing connections Run starts with:
// Config.PublishConns-1, or one for 0 (automatic: more open as calls grow, Node.growLocked).
// Run's work, so that New does no I/O. On an error it closes the ones it opened.
func (n *Node) dialPublishConns() error {
	conns := n.cfg.PublishConns
	if conns == 0 && n.dial != nil {
		conns = 2
	}
	for i := n.PublishConns(); i < conns; i++ {
		nc, err := n.dial(i)
		if err != nil {
			n.closeExtra()
			return fmt.Errorf("ingest: -nats-publish-conns: connection %d: %w", i+1, err)
		}
		n.mu.Lock()
		n.pubs = append(n.pubs, &pubConn{nc: nc})
		n.mu.Unlock()
	}
	n.mu.Lock()
	n.growing = false // from now on: automatic, Run started, no dial in flight
	n.mu.Unlock()
	return nil
}

// growLocked opens, in the background, one more publishing connection when the node has the
// automatic setting and its extra connections have room for fewer than half a connection's
// calls (n.fill/2) between them, so that the next one is up before it is needed and a call start
// never waits on a dial; meanwhile a call past the fill takes the least-loaded connection
// (assignConn). At most n.maxConns connections, the node's own among them; one dial at a time,
// and none within growRetry of a failed one. Must hold n.mu.
func (n *Node) growLocked() {
	if n.cfg.PublishConns != 0 || n.dial == nil || n.growing || len(n.pubs) >= n.maxConns || time.Now().Before(n.growAfter) {
		return
	}
	free := 0
	for _, p := range n.pubs[1:] {
		free += max(0, n.fill-p.calls)
	}
	if free > n.fill/2 {
		return
	}
	n.growing = true
	i := len(n.pubs)
	if !n.g.Go(func() { n.grow(i) }) {
		n.growing = false // shutting down
	}
}

// growRetry is how long the node waits after a failed dial before it tries another; growWait
// how long a dialled connection may take to connect (bus.Connect returns at once, not
// connected, when no server answers: -nats-wait) before it counts as failed.
const (
	growRetry = time.Second
	growWait  = 10 * time.Second
)

// grow dials the node's i-th extra publishing connection and, once it is connected, gives it to
// the calls that start from then on.
func (n *Node) grow(i int) {
	nc, err := n.dial(i)
	for deadline := time.Now().Add(growWait); err == nil && bus.Connected(nc) != nil; { // no call goes on it before it is up
		if n.g.Closed() || time.Now().After(deadline) {
			nc.Close()
			err = fmt.Errorf("not connected within %v, or the node is stopping", growWait)
			break
		}
		time.Sleep(absencePoll)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.growing = false
	if err != nil {
		n.growAfter = time.Now().Add(growRetry)
		n.log.Warn().Err(err).Int("conn", i+1).Msg("publishing connection not opened; the calls take the others meanwhile")
		return
	}
	n.pubs = append(n.pubs, &pubConn{nc: nc, seen: time.Now()})
	n.log.Info().Int("conn", i+1).Int("calls", len(n.calls)).Msg("publishing connection opened")
	n.growLocked() // calls that came meanwhile may need the next one already
}

// ConnsInUse is how many connections carry frames on a node configured with publishConns
// (Config.PublishConns; 0: automatic) that can open connections and holds calls calls at once:
// each extra connection fills to CallsPerPublishConn before the next is used, and the node's
// own carries none when it has another. The load tester gives its raw phases as many
// publishers, like for like.
func ConnsInUse(publishConns, calls int) int {
	if publishConns == 1 {
		return 1
	}
	media := publishConns - 1
	if publishConns == 0 {
		media = MaxPublishConns - 1
	}
	return min(media, max(1, (calls+CallsPerPublishConn-1)/CallsPerPublishConn))
}

// closeExtra flushes and closes the connections the node opened itself (not its own) and
// forgets them.
func (n *Node) closeExtra() {
	n.mu.Lock()
	extra := n.pubs[1:]
	n.pubs = n.pubs[:1:1]
	n.mu.Unlock()
	for _, p := range extra {
		_ = p.nc.FlushTimeout(flushTimeout)
		p.nc.Close()
	}
}

// conns returns the node's publishing connections, its own first.
func (n *Node) conns() []*pubConn {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.pubs
}

// assignConn gives c a connection for its frames: the first with fewer than n.fill calls, or,
// when every one has as many, the one with the fewest; c keeps it for life, so its frames stay
// in order. The node's own connection carries none while the node has another: it carries the
// control traffic (place requests, heartbeats, replay answers), which would otherwise wait
// behind the frames in its buffer and in the server's read of it (docs/loadtest.md, "Where
// the setup time goes"). Filling one connection before the next keeps a node of few calls on
// few connections: each connection's flusher then writes more frames a system call. Must hold
// n.mu, with c entering n.calls.
func (n *Node) assignConn(c *Call) {
	media := n.pubs
	if len(media) > 1 {
		media = media[1:]
	}
	best := media[0]
	for _, p := range media {
		if p.calls < n.fill {
			best = p
			break
		}
		if p.calls < best.calls {
			best = p
		}
	}
	best.calls++
	c.pub = best
	n.growLocked()
}

// extraConnected reports nil when every extra publishing connection is connected: a call whose
// frames go on one that is down loses them, so the node is not ready until all are (each one's
// calls are judged back from an absence once it is: Node.absence).
func (n *Node) extraConnected() error {
	var errs []error
	for i, p := range n.conns()[1:] {
		if err := bus.Connected(p.nc); err != nil {
			errs = append(errs, fmt.Errorf("publish connection %d: %w", i+2, err))
		}
	}
	return errors.Join(errs...)
}

// flushFrames waits until the server has c's frames published so far when they go on another
// connection than the node's own, so that a message for c sent next on the node's own (a replay
// answer: a reply must go out on the connection that got the request) cannot overtake them.
func (n *Node) flushFrames(c *Call) {
	if c.pub == n.own {
		return
	}
	if err := c.pub.nc.FlushTimeout(flushTimeout); err != nil {
		c.log().Warn().Err(err).Msg("frames not flushed before a replay answer")
	}
}

// PublishConns returns how many NATS connections the node publishes on now, its own among them
// (Config.PublishConns once Run has opened them; with 0, as many as its calls have needed).
func (n *Node) PublishConns() int { return len(n.conns()) }

// PublishEvent publishes an event of the call (its tenant and call are set here) on
// events.<tenant>.<call>.<kind>, on the connection the call's frames go on, so that it reaches a
// subscriber after every frame the call published before it, whichever of the node's
// publishing connections the call has. Transports publish their calls' events this way rather
// than on Node.NC. While the node is paused (Pause) nothing goes out.
func (c *Call) PublishEvent(ev wire.Event, data any) error {
	if c.n.paused.Load() {
		return nil
	}
	ev.Tenant, ev.Call = c.spec.Tenant, c.spec.Call
	return bus.PublishEvent(c.pub.nc, ev, data)
}
