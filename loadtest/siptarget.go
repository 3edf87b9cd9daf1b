package loadtest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/session"
)

// Impairments are what the SIP mode does to RTP on its way out, per packet.
type Impairments struct {
	Loss    float64       // probability a packet is not sent
	Jitter  time.Duration // each packet is held for a uniform random 0..Jitter
	Reorder float64       // probability a packet is held back and sent after the next one
}

func (i Impairments) any() bool { return i.Loss > 0 || i.Jitter > 0 || i.Reorder > 0 }

// sipTarget plays calls as SIP user agent clients with RTP: a plain call for one leg, a SIPREC
// (RFC 7866) recording session with one stream per leg otherwise.
type sipTarget struct {
	u    *uac
	col  *Collector
	imp  Impairments
	seed atomic.Uint64
	ends sync.WaitGroup // BYE transactions in flight
	wait time.Duration  // before each BYE
	once sync.Once
	// shared is the one socket every leg sends its RTP from (RTPSocketShared), nil when each
	// leg has its own.
	shared *net.UDPConn

	dropped, delayed, reordered, sent, failed atomic.Int64
}

// RTP sockets of the SIP mode (Config.RTPSocket).
const (
	RTPSocketLeg    = "leg"    // a socket (and source port) per leg, one sendto per packet
	RTPSocketShared = "shared" // one socket for every leg, packets sent in sendmmsg batches
	// RTPSocketAuto is shared against the in-process SIP ingest (a port per call, routed by
	// destination) and leg against a remote one, which may route by source (-sip-rtp-shared).
	RTPSocketAuto = "auto"
)

// rtpSocket resolves RTPSocketAuto: shared for this process's SIP ingest (a port per call),
// leg for a remote one.
func (c *Config) rtpSocket() string {
	switch {
	case c.RTPSocket != RTPSocketAuto:
		return c.RTPSocket
	case c.SIP == "":
		return RTPSocketShared
	}
	return RTPSocketLeg
}

func newSIPTarget(target, tenant string, imp Impairments, col *Collector, hangupDelay time.Duration, rtpSocket string) (*sipTarget, error) {
	u, err := newUAC(target, tenant)
	if err != nil {
		return nil, err
	}
	t := &sipTarget{u: u, imp: imp, col: col, wait: hangupDelay}
	if rtpSocket == RTPSocketShared {
		if t.shared, err = listenRTP(u.ip()); err != nil {
			u.close()
			return nil, err
		}
	}
	return t, nil
}

// listenRTP opens an RTP sending socket on ip; a shared one gets a send buffer for its batches.
func listenRTP(ip string) (*net.UDPConn, error) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
	if err == nil {
		_ = c.SetWriteBuffer(4 << 20)
	}
	return c, err
}

// close waits for the BYEs in flight and closes the client; it may be called more than once.
func (t *sipTarget) close() {
	t.once.Do(func() {
		t.ends.Wait()
		t.u.close()
		if t.shared != nil {
			t.shared.Close()
		}
	})
}

// rtpPayloadType returns the static payload type of a G.711 codec.
func rtpPayloadType(c frame.Codec) (uint8, string, error) {
	switch c {
	case frame.CodecPCMU:
		return ptPCMU, "PCMU", nil
	case frame.CodecPCMA:
		return ptPCMA, "PCMA", nil
	}
	return 0, "", fmt.Errorf("loadtest: SIP mode sends G.711; %s recordings must be 8 kHz (PCM16 8 kHz is encoded to μ-law)", c)
}

func (t *sipTarget) Start(ctx context.Context, spec session.Spec) (Call, error) {
	pt, name, err := rtpPayloadType(spec.Legs[0].Codec)
	if err != nil {
		return nil, err
	}
	c, err := t.newCall(spec.Call, t.u.ip(), pt, len(spec.Legs))
	if err != nil {
		return nil, err
	}
	var body, ctype, extra string
	if len(c.legs) == 1 {
		body, ctype = c.offer(pt, name, false), "application/sdp"
	} else {
		body, ctype = c.siprec(pt, name), "multipart/mixed;boundary=loadtest-boundary"
		extra = "Require: siprec\r\n"
	}
	answer, err := t.u.invite(ctx, &c.d, extra, ctype, body, func() { c.remoteEnded.Store(true) })
	if err != nil {
		c.closeSockets()
		return nil, err
	}
	addrs, err := answerPorts(answer)
	if err == nil && len(addrs) != len(c.legs) {
		err = fmt.Errorf("loadtest: answer has %d streams for %d legs", len(addrs), len(c.legs))
	}
	if err == nil && t.shared != nil {
		err = sharedSocketFits(addrs)
	}
	if err != nil {
		t.hangup(c, 0)
		return nil, err
	}
	for i, l := range c.legs {
		l.dst = addrs[i]
	}
	return c, nil
}

// sharedSocketFits refuses a shared RTP socket against an ingest that answers several streams
// on one port: it tells them apart by their source (-sip-rtp-shared), and every stream would
// come from the same one.
func sharedSocketFits(answer []*net.UDPAddr) error {
	for i, a := range answer {
		for _, b := range answer[:i] {
			if a.Port == b.Port && a.IP.Equal(b.IP) {
				return fmt.Errorf("loadtest: the SIP ingest answers streams on one port %s and routes them by source: run with -sip-rtp-socket leg", a)
			}
		}
	}
	return nil
}

// newCall makes a call's RTP legs, each on its own socket on ip or on the shared one.
func (t *sipTarget) newCall(callID, ip string, pt uint8, legs int) (*sipCall, error) {
	c := &sipCall{t: t, d: sipDialog{callID: callID, fromTag: fmt.Sprintf("%x", rand.Uint64())}, legs: make([]*rtpLeg, legs)}
	seed := t.seed.Add(1)
	for i := range c.legs {
		conn, own := t.shared, false
		if conn == nil {
			var err error
			if conn, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)}); err != nil {
				c.closeSockets()
				return nil, err
			}
			own = true
		}
		c.legs[i] = &rtpLeg{t: t, conn: conn, own: own, pt: pt, seq: uint16(rand.Uint32()), ts: rand.Uint32(), ssrc: rand.Uint32(),
			rng: rand.New(rand.NewPCG(seed, uint64(i)))}
	}
	return c, nil
}

// sipCall is one call's dialog and RTP streams.
type sipCall struct {
	t           *sipTarget
	d           sipDialog
	legs        []*rtpLeg
	remoteEnded atomic.Bool
}

func (c *sipCall) closeSockets() {
	for _, l := range c.legs {
		if l != nil && l.own {
			l.conn.Close()
		}
	}
}

// useBatch makes the legs of a call on the shared socket queue their packets on the batch of
// the pacer shard that plays the call; the shard sends the batch after each tick.
func (c *sipCall) useBatch(tx *rtpBatches) {
	for _, l := range c.legs {
		if !l.own {
			l.tx = tx.get(l.conn)
		}
	}
}

func (c *sipCall) offer(pt uint8, name string, siprec bool) string {
	var b strings.Builder
	ip := c.t.u.ip()
	fmt.Fprintf(&b, "v=0\r\no=loadtest %d 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\n", rand.Uint32(), ip, ip)
	for i, l := range c.legs {
		fmt.Fprintf(&b, "m=audio %d RTP/AVP %d\r\na=rtpmap:%d %s/8000\r\na=ptime:20\r\n", l.conn.LocalAddr().(*net.UDPAddr).Port, pt, pt, name)
		if siprec {
			fmt.Fprintf(&b, "a=label:%d\r\na=sendonly\r\n", i+1)
		} else {
			b.WriteString("a=sendrecv\r\n")
		}
	}
	return b.String()
}

// siprec builds the multipart body of a SIPREC INVITE (RFC 7866 section 8, RFC 7865): participant
// i sends the stream labelled i+1, so the server's leg i carries the recording's leg i.
func (c *sipCall) siprec(pt uint8, name string) string {
	var b strings.Builder
	b.WriteString("--loadtest-boundary\r\nContent-Type: application/sdp\r\n\r\n")
	b.WriteString(c.offer(pt, name, true))
	b.WriteString("--loadtest-boundary\r\nContent-Type: application/rs-metadata+xml\r\nContent-Disposition: recording-session\r\n\r\n")
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?>` + "\r\n<recording xmlns='urn:ietf:params:xml:ns:recording:1'>\r\n<datamode>complete</datamode>\r\n")
	fmt.Fprintf(&b, "<session session_id=\"s-%s\"></session>\r\n", c.d.callID)
	for i := range c.legs {
		fmt.Fprintf(&b, "<participant participant_id=\"p%d\"><nameID aor=\"sip:leg%d@loadtest\"><name>leg %d</name></nameID></participant>\r\n", i, i, i)
	}
	for i := range c.legs {
		fmt.Fprintf(&b, "<stream stream_id=\"st%d\" session_id=\"s-%s\"><label>%d</label></stream>\r\n", i, c.d.callID, i+1)
	}
	for i := range c.legs {
		fmt.Fprintf(&b, "<participantstreamassoc participant_id=\"p%d\"><send>st%d</send></participantstreamassoc>\r\n", i, i)
	}
	b.WriteString("</recording>\r\n--loadtest-boundary--\r\n")
	return b.String()
}

func (c *sipCall) Send(leg int, payload []byte) error {
	if c.remoteEnded.Load() {
		return ErrEnded
	}
	if leg < 0 || leg >= len(c.legs) {
		return ErrLeg
	}
	return c.legs[leg].send(payload, time.Now())
}

// tick releases jittered packets that are due.
func (c *sipCall) tick(now time.Time) {
	for _, l := range c.legs {
		l.release(now, false)
	}
}

func (c *sipCall) End() {
	now := time.Now()
	for i, l := range c.legs {
		l.release(now, true)
		if l.tx != nil && l.tx.n > 0 {
			l.tx.flush() // now, so that a refusal of the leg's last packets is charged below
		}
		if n := l.tailDropped + l.failed; n > 0 {
			// Packets dropped after the last one sent leave no gap for ingest to see or fill: they
			// are the tester's own network loss, not unaccounted frames.
			// A batched packet the kernel refused (fail) ends the leg, so it is at the tail too.
			c.t.col.injectedLoss(c.d.callID, uint8(i), n)
		}
	}
	c.t.hangup(c, c.t.wait)
}

// hangup sends the BYE off the pacer's goroutine and closes the RTP sockets once it is answered.
func (t *sipTarget) hangup(c *sipCall, after time.Duration) {
	t.ends.Add(1)
	go func() {
		defer t.ends.Done()
		defer c.closeSockets()
		time.Sleep(after)
		if c.remoteEnded.Load() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
		defer cancel()
		_ = t.u.bye(ctx, &c.d)
	}()
}

// rtpLeg is one RTP stream (RFC 3550) and its impairments.
type rtpLeg struct {
	t    *sipTarget
	conn *net.UDPConn
	own  bool      // conn is this leg's own (RTPSocketLeg), closed at hang-up
	tx   *rtpBatch // the pacer shard's batch for a shared conn; nil: one sendto per packet
	dst  *net.UDPAddr
	pt   uint8
	seq  uint16
	ts   uint32
	ssrc uint32
	rng  *rand.Rand
	buf  []byte

	held        []byte    // reordering: sent after the next packet
	tailDropped int64     // packets dropped since the last one that went out
	delayed     []delayed // jitter: sent when due
	err         error     // a batched send failed: the leg ends
	failed      int64     // batched packets the kernel refused
}

type delayed struct {
	at  time.Time
	pkt []byte
}

func (l *rtpLeg) packet(dst []byte, payload []byte) []byte {
	dst = append(dst[:0], make([]byte, 12)...)
	dst[0], dst[1] = 0x80, l.pt
	binary.BigEndian.PutUint16(dst[2:], l.seq)
	binary.BigEndian.PutUint32(dst[4:], l.ts)
	binary.BigEndian.PutUint32(dst[8:], l.ssrc)
	dst = append(dst, payload...)
	l.seq++
	l.ts += uint32(len(payload)) // G.711: one byte per sample
	return dst
}

func (l *rtpLeg) write(p []byte) error {
	if l.tx != nil {
		l.tx.push(l, p)
		return nil
	}
	_, err := l.conn.WriteToUDP(p, l.dst)
	if err == nil {
		l.t.sent.Add(1)
	}
	return err
}

func (l *rtpLeg) send(payload []byte, now time.Time) error {
	if l.err != nil {
		return l.err
	}
	imp := &l.t.imp
	if !imp.any() {
		if l.tx != nil { // the header and payload go straight into the batch's buffer
			l.tx.push(l, l.packet(l.tx.slot(), payload))
			return nil
		}
		l.buf = l.packet(l.buf, payload)
		return l.write(l.buf)
	}
	p := l.packet(nil, payload)
	if imp.Loss > 0 && l.rng.Float64() < imp.Loss {
		l.t.dropped.Add(1)
		l.tailDropped++
		return nil
	}
	l.tailDropped = 0
	switch {
	case imp.Jitter > 0:
		at := now.Add(time.Duration(l.rng.Int64N(int64(imp.Jitter) + 1)))
		l.delayed = append(l.delayed, delayed{at: at, pkt: p})
		l.t.delayed.Add(1)
		return nil
	case l.held == nil && imp.Reorder > 0 && l.rng.Float64() < imp.Reorder:
		l.held = p
		l.t.reordered.Add(1)
		return nil
	}
	err := l.write(p)
	if l.held != nil {
		err = errors.Join(err, l.write(l.held))
		l.held = nil
	}
	return err
}

// fail records a batched packet the kernel refused: it is the tester's loss, and the leg ends.
func (l *rtpLeg) fail(err error) {
	l.failed++
	l.t.failed.Add(1)
	if l.err == nil {
		l.err = fmt.Errorf("loadtest: RTP send: %w", err)
	}
}

// release sends the delayed packets that are due (all of them when flush), earliest first.
func (l *rtpLeg) release(now time.Time, flush bool) {
	if flush && l.held != nil {
		_ = l.write(l.held)
		l.held = nil
	}
	for len(l.delayed) > 0 {
		k := -1
		for i, d := range l.delayed {
			if (flush || !d.at.After(now)) && (k < 0 || d.at.Before(l.delayed[k].at)) {
				k = i
			}
		}
		if k < 0 {
			return
		}
		_ = l.write(l.delayed[k].pkt)
		l.delayed = append(l.delayed[:k], l.delayed[k+1:]...)
	}
}
