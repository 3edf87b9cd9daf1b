package sip

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/audio"
	"github.com/callrouter/callrouter/internal/peertest"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// runBaresip writes baresip's configuration into dir, with free ports, and has it dial addr over
// TLS with SRTP mandatory, playing wav, for five seconds. It returns baresip's output.
func runBaresip(t *testing.T, dir, caFile, wav, addr string) []byte {
	rtpLo := peertest.Ports(t, 4)
	config := strings.Join([]string{
		"poll_method epoll",
		"sip_listen 127.0.0.1:" + fmt.Sprint(peertest.Ports(t, 2)), // UDP and TCP on it, TLS on the next
		"sip_cafile " + caFile,
		"audio_source aufile," + wav,
		"audio_player aubridge,nowhere",
		"audio_alert aubridge,nowhere",
		fmt.Sprintf("rtp_ports %d-%d", rtpLo, rtpLo+3),
		"module_path /usr/lib/baresip/modules",
		"module g711.so",
		"module aufile.so",
		"module aubridge.so",
		"module srtp.so",
		"module_tmp account.so",
		"module_app menu.so",
		"",
	}, "\n")
	if err := os.WriteFile(filepath.Join(dir, "config"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	account := "<sip:alice@127.0.0.1;transport=tls>;regint=0;mediaenc=srtp-mand;audio_codecs=PCMA\n"
	if err := os.WriteFile(filepath.Join(dir, "accounts"), []byte(account), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// -n 127.0.0.1: baresip's SDP gives its loopback address, which callrouter's RTP source check
	// expects. (baresip 1.0 does not dial sips: URIs; its account's transport=tls is TLS.)
	cmd := exec.CommandContext(ctx, "baresip", "-n", "127.0.0.1", "-f", dir, "-t", "5", "-e", "/dial svc@"+addr)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	t.Logf("baresip:\n%s", tail(out, 4000))
	if err != nil && ctx.Err() != nil {
		t.Fatalf("baresip did not quit: %v", err)
	}
	return out
}

// writeToneWAV writes secs seconds of a 440 Hz tone as 8 kHz mono 16-bit PCM WAV.
func writeToneWAV(t testing.TB, path string, secs int) {
	n := 8000 * secs
	b := make([]byte, 44+2*n)
	copy(b, "RIFF")
	binary.LittleEndian.PutUint32(b[4:], uint32(36+2*n))
	copy(b[8:], "WAVEfmt ")
	binary.LittleEndian.PutUint32(b[16:], 16)
	binary.LittleEndian.PutUint16(b[20:], 1)
	binary.LittleEndian.PutUint16(b[22:], 1)
	binary.LittleEndian.PutUint32(b[24:], 8000)
	binary.LittleEndian.PutUint32(b[28:], 16000)
	binary.LittleEndian.PutUint16(b[32:], 2)
	binary.LittleEndian.PutUint16(b[34:], 16)
	copy(b[36:], "data")
	binary.LittleEndian.PutUint32(b[40:], uint32(2*n))
	for i := range n {
		v := int16(8000 * math.Sin(2*math.Pi*440*float64(i)/8000))
		binary.LittleEndian.PutUint16(b[44+2*i:], uint16(v))
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestBaresipTLSAndSRTP calls callrouter from baresip (Debian baresip-core, a SIP stack nobody
// on the team wrote) over SIP/TLS with SDES SRTP mandatory, playing a tone: the call is
// answered over TLS with SRTP (callrouter's -sip-srtp required), the worker gets real A-law
// frames of the tone, and nothing fails SRTP authentication.
func TestBaresipTLSAndSRTP(t *testing.T) {
	if _, err := exec.LookPath("baresip"); err != nil {
		peertest.Missing(t, "baresip (Debian baresip-core) is not installed")
	}
	pki := newTestPKI(t)
	e := startEnv(t, 1, func(c *Config) {
		c.TLSListen, c.TLSCert, c.TLSKey = "127.0.0.1:0", pki.serverCert, pki.serverKey
		c.SRTP = SRTPRequired
	})
	dir := t.TempDir()
	wav := filepath.Join(dir, "tone.wav")
	writeToneWAV(t, wav, 3)
	// baresip binds its ports itself: another process may take one between our check and its
	// bind, which it reports as "Address already in use" before it dials; then it runs again on
	// other ports.
	for attempt := 1; ; attempt++ {
		out := runBaresip(t, dir, pki.caFile, wav, e.srv.TLSAddr().String())
		if !strings.Contains(string(out), "Address already in use") || len(callKeys()) > 0 {
			break
		}
		if attempt == 3 {
			t.Fatal("baresip found its ports taken three times")
		}
	}
	eventually(t, 15*time.Second, "the worker to stop the call", func() bool { return len(callKeys()) == 1 })
	l := rec.snapshot(callKeys()[0] + "/0")
	real := len(l.seqs) - l.gapFilled
	if real < 100 || l.codec.String() != "pcma" {
		t.Fatalf("%d real %v frames from baresip, want at least 2 s of pcma", real, l.codec)
	}
	// baresip encodes the file's samples with A-law from its first sample on: every byte is our
	// own A-law encoding of the tone, or (the encoders round differently at a step's edge) the
	// code next to it.
	got := l.payload[:min(real*160, 8000*3)]
	off := 0
	for i, b := range got {
		want := audio.EncodeALaw(int16(8000 * math.Sin(2*math.Pi*440*float64(i)/8000)))
		if d := int(b^0x55) - int(want^0x55); d < -1 || d > 1 {
			off++
		}
	}
	t.Logf("%d real frames, %d gap-filled, %d of %d bytes off the tone", real, l.gapFilled, off, len(got))
	if off > 0 {
		t.Errorf("%d of %d bytes are not the tone's A-law samples", off, len(got))
	}
	if v := testutil.ToFloat64(e.srv.m.ended.WithLabelValues("hangup")); v != 1 {
		t.Errorf("%v calls ended by the peer's BYE, want 1", v)
	}
	starts := e.events.of("start")
	if len(starts) != 1 {
		t.Fatalf("%d start events", len(starts))
	}
	var sd struct {
		Meta map[string]string `json:"meta"`
	}
	_ = json.Unmarshal(starts[0].Data, &sd)
	if sd.Meta["sip.transport"] != "tls" || sd.Meta["sip.srtp"] != "AES_CM_128_HMAC_SHA1_80" {
		t.Errorf("call transport %q, srtp %q: want tls and AES_CM_128_HMAC_SHA1_80", sd.Meta["sip.transport"], sd.Meta["sip.srtp"])
	}
	if v := testutil.ToFloat64(e.srv.m.rtpDropped.WithLabelValues("srtp")); v != 0 {
		t.Errorf("%v packets failed SRTP", v)
	}
}
