package whip

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/guard"
	"github.com/pion/dtls/v3"
	"github.com/pion/dtls/v3/pkg/crypto/fingerprint"
	"github.com/pion/rtp"
	"github.com/pion/srtp/v3"
	"github.com/pion/stun/v4"
	"github.com/pion/transport/v4/packetio"
)

// The receive path. Every session shares the one UDP socket and its one read loop (readLoop,
// rx_linux.go), which demultiplexes each datagram by its first byte (RFC 7983): STUN (0–3) is
// answered here as an ICE-lite agent, DTLS (20–63) goes to the session's DTLS server (pion/dtls,
// on a goroutine of the session that wakes only for DTLS records), and SRTP (128–191) is
// decrypted with the session's pion/srtp context and cut into frames by the session's cutter on
// the read loop itself. No goroutine hand-off per packet (pion's PeerConnection had five or six),
// and on Linux the loop takes its packets in batches: busy, one wake-up per millisecond.

// maxAddrs bounds the remote addresses one session's peer may check from (its candidates).
const maxAddrs = 8

// maxPending bounds the SRTP packets kept while the session's DTLS finishes.
const maxPending = 32

// dtlsQueue bounds the DTLS bytes waiting for a session's DTLS server.
const dtlsQueue = 64 << 10

var errNoPath = errors.New("whip: no ICE path to the peer yet")

// iceToken returns n random bytes as ICE characters (RFC 8839: ALPHA, DIGIT, "+", "/").
func iceToken(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawStdEncoding.EncodeToString(b)
}

// media is a session's receive state; the read loop and the reorder timer hold its lock.
type mediaRx struct {
	sync.Mutex
	closed   bool
	rx, tx   *srtp.Context // set once DTLS is up
	pending  [][]byte      // SRTP that came before the keys
	cut      *cutter       // set by the first RTP packet of the answered codec
	rr       *receiverReports
	ssrc     uint32
	pkt      rtp.Packet
	hdr      rtp.Header
	dec, out []byte
	timer    *time.Timer // the reorder window's
	timerAt  int64       // when timer fires (Unix ns), 0: not armed
	lastRTP  atomic.Int64
}

// transport is a session's ICE and DTLS state.
type transport struct {
	local     localICE
	remote    *offer
	dtlsIn    *packetio.Buffer // DTLS records from the read loop to the DTLS server
	nominated chan struct{}    // closed once the peer has a path (sel set)
	nomOnce   sync.Once
	sel       atomic.Pointer[netip.AddrPort] // the path RTCP, DTLS and consent checks go to
	addrs     []netip.AddrPort               // checked addresses (guarded by Server.rmu)
	lastRecv  atomic.Int64                   // an authenticated packet from the peer (Unix ns)
	stopped   atomic.Bool                    // the read loop drops the session's packets
}

// register gives sess its ICE credentials and routes STUN requests for them to it.
func (s *Server) register(sess *session, o *offer) {
	sess.t.remote = o
	sess.t.dtlsIn = packetio.NewBuffer()
	sess.t.dtlsIn.SetLimitSize(dtlsQueue)
	sess.t.nominated = make(chan struct{})
	sess.m.dec, sess.m.out = make([]byte, 1500), make([]byte, 0, 1500)
	s.rmu.Lock()
	defer s.rmu.Unlock()
	for {
		sess.t.local = localICE{ufrag: iceToken(6), pwd: iceToken(18), fingerprint: s.fingerprint, candidates: s.candidates}
		if s.byUfrag[sess.t.local.ufrag] == nil {
			break
		}
	}
	s.byUfrag[sess.t.local.ufrag] = sess
}

// unregister stops routing anything to sess.
func (s *Server) unregister(sess *session) {
	sess.t.stopped.Store(true)
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if s.byUfrag[sess.t.local.ufrag] == sess {
		delete(s.byUfrag, sess.t.local.ufrag)
	}
	for _, a := range sess.t.addrs {
		if s.byAddr[a] == sess {
			delete(s.byAddr, a)
		}
	}
	sess.t.addrs = nil
}

func (s *Server) sessionAt(a netip.AddrPort) *session {
	s.rmu.RLock()
	sess := s.byAddr[a]
	s.rmu.RUnlock()
	return sess
}

// datagram demultiplexes one datagram by its first byte (RFC 7983); m is the loop's STUN message.
func (s *Server) datagram(b []byte, from netip.AddrPort, m *stun.Message) {
	switch {
	case len(b) == 0:
	case b[0] < 4:
		s.stunIn(b, from, m)
	case b[0] >= 20 && b[0] < 64:
		if sess := s.sessionAt(from); sess != nil {
			_, _ = sess.t.dtlsIn.Write(b) // full: dropped, DTLS retransmits
		}
	case b[0] >= 128 && b[0] < 192:
		if sess := s.sessionAt(from); sess != nil && !sess.t.stopped.Load() {
			sess.rtpIn(b)
		}
	}
}

// stunIn answers a binding request for a session's credentials (ICE-lite, RFC 8445 7.3) and
// takes the answers to the session's consent checks.
func (s *Server) stunIn(b []byte, from netip.AddrPort, m *stun.Message) {
	m.Raw = append(m.Raw[:0], b...)
	if m.Decode() != nil || m.Type.Method != stun.MethodBinding {
		return
	}
	switch m.Type.Class {
	case stun.ClassRequest:
		var u stun.Username
		if u.GetFrom(m) != nil {
			return
		}
		local, _, _ := strings.Cut(string(u), ":")
		s.rmu.RLock()
		sess := s.byUfrag[local]
		s.rmu.RUnlock()
		if sess == nil || sess.t.stopped.Load() {
			return
		}
		integrity := stun.NewShortTermIntegrity(sess.t.local.pwd)
		if integrity.Check(m) != nil || (m.Contains(stun.AttrFingerprint) && stun.Fingerprint.Check(m) != nil) {
			return
		}
		nominate := m.Contains(stun.AttrUseCandidate)
		first := s.checked(sess, from, nominate)
		ip := from.Addr().Unmap()
		res, err := stun.Build(stun.NewTransactionIDSetter(m.TransactionID), stun.BindingSuccess,
			&stun.XORMappedAddress{IP: ip.AsSlice(), Port: int(from.Port())}, integrity, stun.Fingerprint)
		if err == nil {
			_, _ = s.udp.WriteToUDPAddrPort(res.Raw, from)
		}
		if first && !nominate {
			// A controlling agent nominates a pair that has succeeded when the other side checks
			// it (pion does so at once; otherwise at its next check, 200 ms later): the first
			// consent check goes out now rather than one keepalive from now.
			sess.consent()
		}
	case stun.ClassSuccessResponse:
		if sess := s.sessionAt(from); sess != nil && stun.NewShortTermIntegrity(sess.t.remote.pwd).Check(m) == nil {
			sess.t.lastRecv.Store(time.Now().UnixNano())
		}
	}
}

// checked records a valid check from the peer at from: the address is the session's from now on
// (up to maxAddrs), and the path once nominated (USE-CANDIDATE) or while there is none. It
// reports whether this check gave the session its first path.
func (s *Server) checked(sess *session, from netip.AddrPort, nominate bool) (first bool) {
	t := &sess.t
	t.lastRecv.Store(time.Now().UnixNano())
	s.rmu.Lock()
	if _, taken := s.byAddr[from]; !taken && len(t.addrs) < maxAddrs && !t.stopped.Load() {
		s.byAddr[from] = sess
		t.addrs = append(t.addrs, from)
	}
	mine := s.byAddr[from] == sess
	s.rmu.Unlock()
	if mine && (nominate || t.sel.Load() == nil) {
		t.sel.Store(&from)
		t.nomOnce.Do(func() { close(t.nominated); first = true })
	}
	return first
}

// send writes b to the peer's path.
func (sess *session) send(b []byte) (int, error) {
	a := sess.t.sel.Load()
	if a == nil {
		return 0, errNoPath
	}
	return sess.s.udp.WriteToUDPAddrPort(b, *a)
}

// consent sends a binding request on the path (RFC 7675 consent freshness): its answer, like
// any authenticated packet from the peer, keeps the session from ice_failed.
func (sess *session) consent() {
	if sess.t.sel.Load() == nil {
		return
	}
	var tie, prio [8]byte
	_, _ = rand.Read(tie[:])
	binary.BigEndian.PutUint32(prio[:4], 1862270975) // peer-reflexive, as RFC 8445 5.1.2 computes it
	m, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.NewUsername(sess.t.remote.ufrag+":"+sess.t.local.ufrag),
		stun.RawAttribute{Type: stun.AttrICEControlled, Value: tie[:]}, stun.RawAttribute{Type: stun.AttrPriority, Value: prio[:4]},
		stun.NewShortTermIntegrity(sess.t.remote.pwd), stun.Fingerprint)
	if err == nil {
		_, _ = sess.send(m.Raw)
	}
}

// rtpIn takes one SRTP or SRTCP packet from the peer, on the read loop.
func (sess *session) rtpIn(b []byte) {
	defer guard.Recover("whip_track", sess.log, sess.failed) // deferred first: the unlock runs before it
	if len(b) > 1 && b[1] >= 192 && b[1] <= 223 {
		return // RTCP (RFC 5761): the sender's reports are not read
	}
	m := &sess.m
	m.Lock()
	defer m.Unlock()
	switch {
	case m.closed:
	case m.rx == nil: // the peer's DTLS finished before ours: kept for when the keys are here
		if len(m.pending) < maxPending {
			m.pending = append(m.pending, append([]byte(nil), b...))
		}
	default:
		sess.rtpLocked(b)
	}
}

// rtpLocked decrypts one SRTP packet and cuts it (m held).
func (sess *session) rtpLocked(b []byte) {
	m := &sess.m
	dec, err := m.rx.DecryptRTP(m.dec, b, &m.hdr)
	if err != nil {
		return
	}
	now := time.Now().UnixNano()
	sess.t.lastRecv.Store(now)
	if m.hdr.PayloadType != sess.t.remote.pt || (m.cut != nil && m.hdr.SSRC != m.ssrc) {
		return
	}
	if hook := sess.s.packetHook.Load(); hook != nil {
		(*hook)(sess.callID, dec)
	}
	if m.pkt.Unmarshal(dec) != nil {
		return
	}
	if m.cut == nil {
		m.start(sess)
	}
	m.lastRTP.Store(now)
	m.cut.push(m.pkt.SequenceNumber, m.pkt.Timestamp, m.pkt.Payload, now)
	m.rr.packet(m.pkt.SequenceNumber, m.pkt.Timestamp, now)
	if m.rr.due(now) {
		sess.sendReport(now)
	}
	m.arm(sess, now)
}

// start begins the media of the stream whose first packet is m.pkt.
func (m *mediaRx) start(sess *session) {
	call := sess.call
	m.ssrc = m.pkt.SSRC
	m.cut = newCutter(sess.codec, sess.s.cfg.ReorderWindow, sess.s.cfg.MaxFill, func(p []byte, f frame.Flags, at time.Time) {
		if call.SendAt(0, p, f, at) != nil {
			m.cut.Unpublished++
		}
	})
	m.rr = newReceiverReports(m.ssrc, sess.codec.clock)
}

// sendReport sends the receiver report due at now (m held).
func (sess *session) sendReport(now int64) {
	m := &sess.m
	raw, err := m.rr.report(now).Marshal()
	if err == nil {
		m.out, err = m.tx.EncryptRTCP(m.out[:0], raw, nil)
	}
	if err == nil {
		_, err = sess.send(m.out)
	}
	if err != nil {
		sess.log.Debug().Err(err).Msg("receiver report")
	}
}

// arm sets the reorder timer when the cutter waits for a missing packet (m held): it fires
// when the oldest waiting packet has waited the window, without more packets.
func (m *mediaRx) arm(sess *session, now int64) {
	next := m.cut.poll(now)
	if next == 0 || (m.timerAt != 0 && m.timerAt <= next) {
		return
	}
	m.timerAt = next
	if m.timer == nil {
		m.timer = time.AfterFunc(time.Duration(next-now), sess.reorderTimeout)
		return
	}
	m.timer.Reset(time.Duration(next - now))
}

func (sess *session) reorderTimeout() {
	defer guard.Recover("whip_track", sess.log, sess.failed)
	m := &sess.m
	m.Lock()
	defer m.Unlock()
	m.timerAt = 0
	if !m.closed && m.cut != nil {
		m.arm(sess, time.Now().UnixNano())
	}
}

// closeMedia stops the media and returns the cutter (nil if no RTP came) for its report.
func (sess *session) closeMedia() *cutter {
	m := &sess.m
	m.Lock()
	defer m.Unlock()
	m.closed = true
	if m.timer != nil {
		m.timer.Stop()
	}
	return m.cut
}

// dtlsEndpoint is the session's side of the shared socket as the DTLS server sees it.
type dtlsEndpoint struct{ sess *session }

func (e dtlsEndpoint) ReadFrom(p []byte) (int, net.Addr, error) {
	n, err := e.sess.t.dtlsIn.Read(p)
	return n, e.remote(), err
}

func (e dtlsEndpoint) WriteTo(p []byte, _ net.Addr) (int, error) { return e.sess.send(p) }
func (e dtlsEndpoint) Close() error                              { return e.sess.t.dtlsIn.Close() }
func (e dtlsEndpoint) LocalAddr() net.Addr                       { return e.sess.s.udp.LocalAddr() }
func (e dtlsEndpoint) SetDeadline(t time.Time) error             { return e.sess.t.dtlsIn.SetReadDeadline(t) }
func (e dtlsEndpoint) SetReadDeadline(t time.Time) error         { return e.sess.t.dtlsIn.SetReadDeadline(t) }
func (e dtlsEndpoint) SetWriteDeadline(time.Time) error          { return nil }

func (e dtlsEndpoint) remote() net.Addr {
	if a := e.sess.t.sel.Load(); a != nil {
		return net.UDPAddrFromAddrPort(*a)
	}
	return &net.UDPAddr{}
}

// runDTLS runs the session's DTLS server once the peer has an ICE path: the handshake (the
// peer's certificate must match the offer's fingerprint), the SRTP keys from it (RFC 5764), then
// reads until the peer closes (close_notify) or the session ends.
func (sess *session) runDTLS() {
	defer guard.Recover("whip_session", sess.log, sess.failed)
	select {
	case <-sess.t.nominated:
	case <-sess.done:
		return
	}
	s := sess.s
	ep := dtlsEndpoint{sess}
	dc, err := dtls.ServerWithOptions(ep, ep.remote(),
		dtls.WithCertificates(s.cert),
		dtls.WithSRTPProtectionProfiles(dtls.SRTP_AEAD_AES_256_GCM, dtls.SRTP_AEAD_AES_128_GCM, dtls.SRTP_AES128_CM_HMAC_SHA1_80),
		dtls.WithExtendedMasterSecret(dtls.RequestExtendedMasterSecret),
		dtls.WithInsecureSkipVerify(true), // the peer's certificate is self-signed: its fingerprint is checked instead
		dtls.WithVerifyPeerCertificate(sess.verifyPeer),
		dtls.WithClientAuth(dtls.RequireAnyClientCert))
	if err != nil {
		sess.end(reasonDTLSFailed)
		return
	}
	sess.mu.Lock()
	if sess.state == stateEnded {
		sess.mu.Unlock()
		_ = dc.Close()
		return
	}
	sess.dtls = dc
	sess.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ConnectTimeout)
	err = dc.HandshakeContext(ctx)
	cancel()
	if err == nil {
		err = sess.startSRTP(dc)
	}
	if err != nil {
		sess.log.Debug().Err(err).Msg("dtls")
		sess.end(reasonDTLSFailed)
		return
	}
	sess.setState(stateConnected, "")
	buf := make([]byte, 1500)
	for errs := 0; errs < 100; { // application data is not expected; a closed conn reads EOF
		if _, err := dc.Read(buf); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, dtls.ErrConnClosed) {
				break
			}
			errs++
		}
	}
	sess.end(reasonClosed)
}

// verifyPeer checks the peer's certificate against the offer's fingerprint.
func (sess *session) verifyPeer(raw [][]byte, _ [][]*x509.Certificate) error {
	if len(raw) == 0 {
		return errors.New("whip: no peer certificate")
	}
	cert, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return err
	}
	h, err := fingerprint.HashFromString(sess.t.remote.fpAlg)
	if err != nil {
		return err
	}
	got, err := fingerprint.Fingerprint(cert, h)
	if err != nil {
		return err
	}
	if !strings.EqualFold(got, sess.t.remote.fp) {
		return errors.New("whip: peer certificate does not match the offer's fingerprint")
	}
	return nil
}

// startSRTP derives the SRTP keys from the DTLS handshake and hands them to the read loop.
func (sess *session) startSRTP(dc *dtls.Conn) error {
	profile, ok := dc.SelectedSRTPProtectionProfile()
	if !ok {
		return errors.New("whip: no SRTP protection profile negotiated")
	}
	state, ok := dc.ConnectionState()
	if !ok {
		return errors.New("whip: no DTLS state")
	}
	cfg := srtp.Config{Profile: srtp.ProtectionProfile(profile)}
	if err := cfg.ExtractSessionKeysFromDTLS(&state, false); err != nil {
		return err
	}
	rx, err := srtp.CreateContext(cfg.Keys.RemoteMasterKey, cfg.Keys.RemoteMasterSalt, cfg.Profile, srtp.SRTPReplayProtection(64))
	if err != nil {
		return err
	}
	tx, err := srtp.CreateContext(cfg.Keys.LocalMasterKey, cfg.Keys.LocalMasterSalt, cfg.Profile)
	if err != nil {
		return err
	}
	m := &sess.m
	m.Lock()
	defer m.Unlock()
	m.rx, m.tx = rx, tx
	for _, p := range m.pending {
		if !m.closed {
			sess.rtpLocked(p)
		}
	}
	m.pending = nil
	return nil
}

// closeTransport ends the session's DTLS (close_notify to the peer) and stops its routing.
func (sess *session) closeTransport() {
	sess.s.unregister(sess)
	if sess.t.dtlsIn != nil {
		_ = sess.t.dtlsIn.Close()
	}
	sess.mu.Lock()
	dc := sess.dtls
	sess.mu.Unlock()
	if dc != nil {
		_ = dc.Close()
	}
}

// serverCert makes the certificate every session's DTLS uses and its SHA-256 fingerprint.
func serverCert(cert tls.Certificate) (string, error) {
	x, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return "", err
	}
	h, _ := fingerprint.HashFromString("sha-256")
	return fingerprint.Fingerprint(x, h)
}

// hostCandidates returns the addresses the answers announce: PublicIPs, or the socket's address,
// or, for a wildcard socket, every interface's address that is neither loopback nor link-local.
func hostCandidates(local netip.AddrPort, public []string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, p := range public {
		ip, err := netip.ParseAddr(p)
		if err != nil {
			return nil, err
		}
		out = append(out, netip.AddrPortFrom(ip.Unmap(), local.Port()))
	}
	if len(out) > 0 {
		return out, nil
	}
	if !local.Addr().IsUnspecified() {
		return []netip.AddrPort{netip.AddrPortFrom(local.Addr().Unmap(), local.Port())}, nil
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if ip = ip.Unmap(); !ok || ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsMulticast() || ip.IsUnspecified() {
			continue
		}
		out = append(out, netip.AddrPortFrom(ip, local.Port()))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("whip: udp address %v: no interface address to announce (set a public IP)", local)
	}
	return out, nil
}
