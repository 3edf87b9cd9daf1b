package sip

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/pion/rtp"
	"github.com/pion/srtp/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestParseCrypto(t *testing.T) {
	key30 := base64.StdEncoding.EncodeToString(make([]byte, 30))
	key28 := base64.StdEncoding.EncodeToString(make([]byte, 28))
	for _, c := range []struct {
		line  string
		suite string // "" when the line is unusable
	}{
		{"1 AES_CM_128_HMAC_SHA1_80 inline:" + key30, "AES_CM_128_HMAC_SHA1_80"},
		{"2 AES_CM_128_HMAC_SHA1_32 inline:" + key30 + "|2^20", "AES_CM_128_HMAC_SHA1_32"},
		{"3 AEAD_AES_128_GCM inline:" + key28, "AEAD_AES_128_GCM"},
		{"1 AES_CM_128_HMAC_SHA1_80 inline:" + key30 + "|2^20|1:4", ""},        // MKI
		{"1 AES_CM_128_HMAC_SHA1_80 inline:" + key28, ""},                      // short key
		{"1 AES_CM_128_HMAC_SHA1_80 inline:" + key30 + " KDR=1", ""},           // session parameter
		{"1 F8_128_HMAC_SHA1_80 inline:" + key30, ""},                          // unknown suite
		{"1 AES_CM_128_HMAC_SHA1_80 inline:" + key30 + ";inline:" + key30, ""}, // two keys
		{"x AES_CM_128_HMAC_SHA1_80 inline:" + key30, ""},
		{"1 AES_CM_128_HMAC_SHA1_80 inline:!!!", ""},
	} {
		k, err := parseCrypto(c.line)
		if c.suite == "" && err == nil || c.suite != "" && (err != nil || k.suite != c.suite) {
			t.Errorf("parseCrypto(%q) = %v, %v; want suite %q", c.line, k.suite, err, c.suite)
		}
	}
}

// srtpSender encrypts RTP with an SDES key it offers.
type srtpSender struct {
	line string
	ctx  *srtp.Context
}

func newSRTPSender(t testing.TB, tag int, suite string, profile srtp.ProtectionProfile) *srtpSender {
	kl, _ := profile.KeyLen()
	sl, _ := profile.SaltLen()
	km := make([]byte, kl+sl)
	for i := range km {
		km[i] = byte(tag*31 + i)
	}
	ctx, err := srtp.CreateContext(km[:kl], km[kl:], profile)
	if err != nil {
		t.Fatal(err)
	}
	return &srtpSender{line: fmt.Sprintf("%d %s inline:%s", tag, suite, base64.StdEncoding.EncodeToString(km)), ctx: ctx}
}

func (s *srtpSender) protect(t testing.TB, pkt []byte) []byte {
	out, err := s.ctx.EncryptRTP(nil, pkt, nil)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// pcmaOffer is a PCMA offer on the uac's RTP port, with proto and a=crypto lines.
func (u *uac) pcmaOffer(proto string, crypto ...string) string {
	o := fmt.Sprintf("v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio %d %s 8\r\na=rtpmap:8 PCMA/8000\r\n", u.rtpPort(), proto)
	for _, c := range crypto {
		o += "a=crypto:" + c + "\r\n"
	}
	return o
}

// testPackets are n 30 ms PCMA packets whose audio differs from packet to packet, with packets
// 10 and 11 swapped (the cutter reorders them).
func testPackets(n int) [][]byte {
	var out [][]byte
	for i := range n {
		payload := make([]byte, 240)
		for j := range payload {
			payload[j] = byte(i*7 + j)
		}
		out = append(out, rtpPacket(8, uint16(1000+i), uint32(240*i), payload))
		out[i][8], out[i][9], out[i][10], out[i][11] = 0, 0, 0x12, 0x34
	}
	out[10], out[11] = out[11], out[10]
	return out
}

// sendPaced sends packets from conn to the answer's port, 30 ms apart.
func sendPaced(t testing.TB, conn *net.UDPConn, port int, pkts [][]byte) {
	t.Helper()
	dst := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
	for _, p := range pkts {
		if _, err := conn.WriteToUDP(p, dst); err != nil {
			t.Fatal(err)
		}
		time.Sleep(30 * time.Millisecond)
	}
}

// TestSRTPFramesIdenticalToRTP places a plain RTP call and an SRTP (SDES) call and sends the
// same 30 ms packets on both (SRTP encrypted with pion/srtp, re-keyed halfway by a re-INVITE,
// with a forged and a replayed packet in between): the worker gets identical frames from both.
// The answer carries callrouter's own key for the offer's tag and suite.
func TestSRTPFramesIdenticalToRTP(t *testing.T) {
	e := startEnv(t, 1, nil)
	pkts := testPackets(60)

	plain := newUAC(t, e.addr)
	plainID := newCallID("plain")
	res := plain.request("INVITE", plainID, "", 1, "", "application/sdp", plain.pcmaOffer("RTP/AVP"))
	if codeOf(res) != "200" || strings.Contains(res, "a=crypto") {
		t.Fatalf("plain call: %s", res)
	}
	plainTag := toTagRe.FindStringSubmatch(res)[1]
	plain.request("ACK", plainID, plainTag, 1, "", "", "")
	port, _ := strconv.Atoi(mPortRe.FindStringSubmatch(res)[1])
	sendPaced(t, plain.rtp, port, pkts)

	sec := newUAC(t, e.addr)
	secID := newCallID("srtp")
	first := newSRTPSender(t, 1, "AES_CM_128_HMAC_SHA1_80", srtp.ProtectionProfileAes128CmHmacSha1_80)
	unusable := "1 F8_128_HMAC_SHA1_80 inline:" + base64.StdEncoding.EncodeToString(make([]byte, 30))
	res = sec.request("INVITE", secID, "", 1, "", "application/sdp", sec.pcmaOffer("RTP/SAVP", unusable, first.line))
	if codeOf(res) != "200" {
		t.Fatalf("SRTP call: %s", res)
	}
	if !strings.Contains(res, "RTP/SAVP 8") {
		t.Errorf("answer is not RTP/SAVP:\n%s", res)
	}
	ans := headerRe("a=crypto").FindStringSubmatch(strings.ReplaceAll(res, "a=crypto:", "a=crypto: "))
	if ans == nil || !strings.HasPrefix(ans[1], "1 AES_CM_128_HMAC_SHA1_80 inline:") || ans[1] == first.line {
		t.Fatalf("answer crypto %v: want tag 1, the offer's suite and a key of callrouter's own", ans)
	}
	if _, err := parseCrypto(ans[1]); err != nil {
		t.Errorf("answer crypto %q: %v", ans[1], err)
	}
	tag := toTagRe.FindStringSubmatch(res)[1]
	sec.request("ACK", secID, tag, 1, "", "", "")
	port, _ = strconv.Atoi(mPortRe.FindStringSubmatch(res)[1])
	var wire [][]byte
	for _, p := range pkts[:30] {
		wire = append(wire, first.protect(t, p))
	}
	forged := slices.Clone(wire[29])
	forged[20] ^= 0xff                                          // one payload bit pattern changed: authentication fails
	sendPaced(t, sec.rtp, port, append(wire, forged, wire[28])) // and a replay

	// A re-INVITE with a new key (RFC 4568 section 7.1.4): the rest is encrypted with it.
	second := newSRTPSender(t, 2, "AEAD_AES_128_GCM", srtp.ProtectionProfileAeadAes128Gcm)
	res = sec.request("INVITE", secID, tag, 2, "", "application/sdp", sec.pcmaOffer("RTP/SAVP", second.line))
	if codeOf(res) != "200" || !strings.Contains(res, "a=crypto:2 AEAD_AES_128_GCM inline:") {
		t.Fatalf("re-INVITE with a new key: %s", res)
	}
	sec.request("ACK", secID, tag, 2, "", "", "")
	wire = wire[:0]
	for _, p := range pkts[30:] {
		wire = append(wire, second.protect(t, p))
	}
	sendPaced(t, sec.rtp, port, wire)

	for _, c := range []struct {
		u       *uac
		id, tag string
	}{{plain, plainID, plainTag}, {sec, secID, tag}} {
		if res := c.u.request("BYE", c.id, c.tag, 9, "", "", ""); codeOf(res) != "200" {
			t.Errorf("BYE: %s", res)
		}
	}
	eventually(t, 10*time.Second, "the worker to stop both calls", func() bool { return len(callKeys()) == 2 })
	if n := testutil.ToFloat64(e.srv.m.rtpDropped.WithLabelValues("srtp")); n != 2 {
		t.Errorf("rtp dropped{srtp} = %v, want 2 (the forged and the replayed packet)", n)
	}
	a := rec.snapshot("default/" + subjects.Encode(plainID) + "/0")
	b := rec.snapshot("default/" + subjects.Encode(secID) + "/0")
	realA, realB := len(a.seqs)-a.gapFilled, len(b.seqs)-b.gapFilled
	if want := 60 * 240 / 160; realA != want || realB != want {
		t.Fatalf("real frames: plain %d, SRTP %d, want %d each", realA, realB, want)
	}
	n := realA
	if !slices.Equal(a.seqs[:n], b.seqs[:n]) || string(a.payload[:n*160]) != string(b.payload[:n*160]) ||
		a.codec != frame.CodecPCMA || b.codec != a.codec || slices.ContainsFunc(a.filledAt, func(s uint32) bool { return s < uint32(n) }) ||
		slices.ContainsFunc(b.filledAt, func(s uint32) bool { return s < uint32(n) }) {
		t.Errorf("SRTP frames differ from the plain RTP frames")
	}
	var want []byte
	for i := range 60 {
		want = append(want, rtpPayload(pkts, uint16(1000+i))...)
	}
	if string(a.payload[:n*160]) != string(want) {
		t.Errorf("plain frames are not the packets' audio in order")
	}
	starts := e.events.of("start")
	for _, ev := range starts {
		var sd struct {
			Meta map[string]string `json:"meta"`
		}
		_ = json.Unmarshal(ev.Data, &sd)
		if want := map[string]string{subjects.Encode(plainID): "", subjects.Encode(secID): "AES_CM_128_HMAC_SHA1_80"}[ev.Call]; sd.Meta["sip.srtp"] != want {
			t.Errorf("call %s: sip.srtp %q, want %q", ev.Call, sd.Meta["sip.srtp"], want)
		}
	}
}

// rtpPayload returns the payload of the packet with sequence number seq.
func rtpPayload(pkts [][]byte, seq uint16) []byte {
	for _, p := range pkts {
		if uint16(p[2])<<8|uint16(p[3]) == seq {
			return p[12:]
		}
	}
	return nil
}

// TestSRTPPolicy: with -sip-srtp required an RTP/AVP offer, and an RTP/SAVP offer without a
// usable key, get 488; with off an RTP/SAVP offer gets 488.
func TestSRTPPolicy(t *testing.T) {
	key := newSRTPSender(t, 1, "AES_CM_128_HMAC_SHA1_80", srtp.ProtectionProfileAes128CmHmacSha1_80).line
	for _, c := range []struct {
		policy, proto, crypto, code, warn string
	}{
		{SRTPRequired, "RTP/AVP", "", "488", "SRTP (RTP/SAVP with a=crypto) is required"},
		{SRTPRequired, "RTP/SAVP", "1 AES_CM_128_HMAC_SHA1_80 inline:AAAA", "488", "Incompatible media format"},
		{SRTPRequired, "RTP/SAVP", key, "200", ""},
		{SRTPOff, "RTP/SAVP", key, "488", "Incompatible media format"},
		{SRTPOff, "RTP/AVP", "", "200", ""},
	} {
		t.Run(c.policy+" "+c.proto, func(t *testing.T) {
			e := startEnv(t, 1, func(cfg *Config) { cfg.SRTP = c.policy })
			u := newUAC(t, e.addr)
			id := newCallID("policy")
			var crypto []string
			if c.crypto != "" {
				crypto = []string{c.crypto}
			}
			res := u.request("INVITE", id, "", 1, "", "application/sdp", u.pcmaOffer(c.proto, crypto...))
			if codeOf(res) != c.code || !strings.Contains(res, c.warn) {
				t.Errorf("got\n%s\nwant %s with %q", res, c.code, c.warn)
			}
			if codeOf(res) == "200" {
				tag := toTagRe.FindStringSubmatch(res)[1]
				u.request("ACK", id, tag, 1, "", "", "")
				u.request("BYE", id, tag, 2, "", "", "")
			}
		})
	}
}

func srtpTestStream(t testing.TB) (*stream, *srtpSender) {
	st := testStream(func(int, []byte, frame.Flags) error { return nil })
	snd := newSRTPSender(t, 1, "AES_CM_128_HMAC_SHA1_80", srtp.ProtectionProfileAes128CmHmacSha1_80)
	k, err := parseCrypto(snd.line)
	if err != nil {
		t.Fatal(err)
	}
	ctx, err := newSRTPContext(k)
	if err != nil {
		t.Fatal(err)
	}
	st.srtp.Store(ctx)
	return st, snd
}

// encryptRun returns n encrypted 30 ms PCMA packets from sequence number seq0 on.
func encryptRun(t testing.TB, snd *srtpSender, seq0 uint16, ts0 uint32, n int) [][]byte {
	out := make([][]byte, n)
	var h rtp.Header
	for i := range out {
		p := rtpPacket(8, seq0+uint16(i), ts0+uint32(240*i), make([]byte, 240))
		enc, err := snd.ctx.EncryptRTP(nil, p, &h)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = enc
	}
	return out
}

func TestStreamSRTPZeroAllocs(t *testing.T) {
	st, snd := srtpTestStream(t)
	from := netip.MustParseAddrPort("127.0.0.1:4000")
	pkts := encryptRun(t, snd, 0, 0, 1100)
	now := time.Unix(0, 0)
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		st.handle(now, from, pkts[i])
		i++
		now = now.Add(30 * time.Millisecond)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per SRTP packet, want 0", allocs)
	}
	if n := testutil.ToFloat64(st.m.rtpDropped.WithLabelValues("srtp")); n != 0 {
		t.Errorf("%v packets failed SRTP", n)
	}
}

// BenchmarkStreamHandleSRTP is BenchmarkStreamHandle with SRTP (AES_CM_128_HMAC_SHA1_80)
// authentication and decryption in front; the difference is SRTP's cost per packet.
func BenchmarkStreamHandleSRTP(b *testing.B) {
	st, snd := srtpTestStream(b)
	from := netip.MustParseAddrPort("127.0.0.1:4000")
	now := time.Unix(0, 0)
	const batch = 4096
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; done += batch {
		b.StopTimer()
		pkts := encryptRun(b, snd, uint16(done), uint32(240*done), min(batch, b.N-done))
		b.StartTimer()
		for _, p := range pkts {
			st.handle(now, from, p)
			now = now.Add(30 * time.Millisecond)
		}
	}
}

// FuzzParseCrypto checks that any a=crypto value either is refused or gives a key and salt of
// its suite's lengths, and that the answer to it parses with the same tag and suite.
func FuzzParseCrypto(f *testing.F) {
	f.Add("1 AES_CM_128_HMAC_SHA1_80 inline:" + base64.StdEncoding.EncodeToString(make([]byte, 30)) + "|2^20")
	f.Add("2 AEAD_AES_256_GCM inline:" + base64.StdEncoding.EncodeToString(make([]byte, 44)))
	f.Add("1 AES_CM_128_HMAC_SHA1_32 inline:AAAA|2^20|1:4 KDR=2")
	f.Fuzz(func(t *testing.T, line string) {
		k, err := parseCrypto(line)
		if err != nil {
			return
		}
		kl, _ := k.profile.KeyLen()
		sl, _ := k.profile.SaltLen()
		if len(k.key) != kl || len(k.salt) != sl {
			t.Fatalf("%q: key %d and salt %d bytes, want %d and %d", line, len(k.key), len(k.salt), kl, sl)
		}
		if _, err := newSRTPContext(k); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		a, err := answerCrypto(k)
		if err != nil {
			t.Fatal(err)
		}
		if k2, err := parseCrypto(a); err != nil || k2.tag != k.tag || k2.suite != k.suite {
			t.Fatalf("answer %q to %q: %v", a, line, err)
		}
	})
}
