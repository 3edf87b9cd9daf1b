package whip

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
)

// localICE is what a session's answer tells the peer about this end: an ICE-lite agent with its
// own credentials, host candidates on the one UDP port, and the server certificate's fingerprint.
type localICE struct {
	ufrag, pwd  string
	fingerprint string // sha-256, colon-separated hex
	candidates  []netip.AddrPort
}

// buildAnswer returns the SDP answer to o: the chosen audio section receive-only with one codec,
// ICE-lite, rtcp-mux, DTLS passive (the endpoint is the DTLS server), every candidate (the
// endpoint does not trickle); every other section of the offer rejected (port 0).
func buildAnswer(o *offer, l *localICE) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\r\n", args...) }
	var id [8]byte
	_, _ = rand.Read(id[:])
	w("v=0")
	w("o=- %d 2 IN IP4 0.0.0.0", binary.BigEndian.Uint64(id[:])>>2)
	w("s=-")
	w("t=0 0")
	mid := o.sections[o.audio].mid
	if o.bundle {
		w("a=group:BUNDLE %s", mid)
	}
	w("a=ice-lite")
	for i, sec := range o.sections {
		if i != o.audio {
			w("m=%s 0 %s %s", sec.media, sec.proto, sec.format)
			w("c=IN IP4 0.0.0.0")
			if sec.mid != "" {
				w("a=mid:%s", sec.mid)
			}
			w("a=inactive")
			continue
		}
		c := o.codec
		w("m=audio 9 %s %d", sec.proto, o.pt)
		w("c=IN IP4 0.0.0.0")
		if mid != "" {
			w("a=mid:%s", mid)
		}
		w("a=ice-ufrag:%s", l.ufrag)
		w("a=ice-pwd:%s", l.pwd)
		w("a=fingerprint:sha-256 %s", l.fingerprint)
		w("a=setup:passive")
		w("a=rtcp-mux")
		w("a=rtpmap:%d %s", o.pt, c.rtpmap)
		if c.fmtp != "" {
			w("a=fmtp:%d %s", o.pt, c.fmtp)
		}
		w("a=recvonly")
		for j, a := range l.candidates {
			w("a=candidate:%d 1 udp %d %s %d typ host", j+1, 2130706431-j, a.Addr().Unmap(), a.Port())
		}
		w("a=end-of-candidates")
	}
	return b.String()
}
