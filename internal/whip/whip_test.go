package whip

import (
	"bytes"
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/google/go-cmp/cmp"
	"github.com/pion/webrtc/v4/pkg/media"
)

// TestRecordedCallsReachWorker sends a recorded WAV through WHIP in both codecs and checks, at
// the worker, every frame complete, in order and byte for byte what the client sent, and, decoded
// (μ-law here, Opus with libopus's opusdec), well above silence where the recording speaks.
//
// The last case runs on an endpoint whose socket reader does not let packets gather
// (-whip-read-coalesce 0): every packet read as it comes.
func TestRecordedCallsReachWorker(t *testing.T) {
	e := startEnv(t, 2, testConfig())
	uncoalesced := testConfig()
	uncoalesced.ReadCoalesce = 0
	e0 := startEnv(t, 1, uncoalesced)
	for _, tc := range []struct {
		name, codec string
		payloads    [][]byte
		e           *env
	}{
		{"opus", "opus", oggOpusPackets(t, "testdata/speech.opus"), e},
		{"pcmu", "pcmu", pcmuFrames(t, "testdata/speech-pcmu.wav"), e},
		{"pcmu read uncoalesced", "pcmu", pcmuFrames(t, "testdata/speech-pcmu.wav"), e0},
	} {
		e := tc.e
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := dial(ctx, e.url, tokenAcme, tc.codec)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.send(ctx, tc.payloads); err != nil {
				t.Fatal(err)
			}
			eventually(t, 5*time.Second, "every frame at the worker", func() bool { return len(processed.frames(c.call)) >= len(tc.payloads) })
			if code, err := c.hangup(); err != nil || code != 200 {
				t.Fatalf("DELETE: %d %v", code, err)
			}
			got := processed.frames(c.call)
			if len(got) != len(tc.payloads) {
				t.Fatalf("worker processed %d frames, client sent %d", len(got), len(tc.payloads))
			}
			wantCodec, wantRate := frame.CodecOpus, uint32(48000)
			if tc.codec == "pcmu" {
				wantCodec, wantRate = frame.CodecPCMU, 8000
			}
			for i, f := range got {
				if f.h.Seq != uint32(i) || f.h.Codec != wantCodec || f.h.SampleRate != wantRate || f.h.Has(frame.FlagGapFilled) {
					t.Fatalf("frame %d: %+v", i, f.h)
				}
				if !bytes.Equal(f.payload, tc.payloads[i]) {
					t.Fatalf("frame %d payload differs from what the client sent", i)
				}
			}
			if g := processed.gapsOf(c.call); len(g) != 0 {
				t.Fatalf("gaps at the worker: %v", g)
			}
			if tc.codec == "pcmu" {
				checkSpeech(t, tc.payloads, got)
			} else {
				checkOpusSpeech(t, tc.payloads, got)
			}
			t.Logf("%s: %d frames complete and in order; POST → first frame at worker %v", tc.codec, len(got), got[0].at.Sub(c.posted))
		})
	}
}

// checkSpeech checks that where the recording speaks the frames at the worker are well above
// silence, and that the recording does have both speech and quiet frames.
func checkSpeech(t *testing.T, sent [][]byte, got []gotFrame) {
	t.Helper()
	speech, quiet := 0, 0
	for i, p := range sent {
		level := rms(p)
		switch {
		case level > 1000:
			speech++
			if l := rms(got[i].payload); l < 500 {
				t.Errorf("frame %d: level %.0f at the worker where the recording speaks (%.0f)", i, l, level)
			}
		case level < 100:
			quiet++
		}
	}
	if speech < 10 {
		t.Fatalf("only %d speech frames in the recording", speech)
	}
	t.Logf("pcmu: %d speech frames above silence at the worker, %d quiet frames", speech, quiet)
}

// TestLossAndSilenceOverWebRTC sends Opus with two packets lost (sequence numbers skipped) and a
// silence-suppression pause (timestamp jump, no sequence gap): the worker gets gap-filled frames
// for the loss and codec silence for the pause, every 20 ms accounted for.
func TestLossAndSilenceOverWebRTC(t *testing.T) {
	e := startEnv(t, 1, testConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dial(ctx, e.url, tokenAcme, "opus")
	if err != nil {
		t.Fatal(err)
	}
	packets := oggOpusPackets(t, "testdata/speech.opus")[:20]
	samples := make([]media.Sample, len(packets))
	for i, p := range packets {
		samples[i] = media.Sample{Data: p, Duration: frame.Duration}
	}
	samples[5].PrevDroppedPackets = 2         // two packets lost before packet 5
	samples[10].Duration = 5 * frame.Duration // then 80 ms of DTX after packet 10
	if err := c.sendSamples(ctx, samples); err != nil {
		t.Fatal(err)
	}
	const want = 20 + 2 + 4
	eventually(t, 5*time.Second, "frames at the worker", func() bool { return len(processed.frames(c.call)) >= want })
	c.hangup()
	got := processed.frames(c.call)
	if len(got) != want {
		t.Fatalf("%d frames at the worker, want %d", len(got), want)
	}
	var kinds []string
	for i, f := range got {
		switch {
		case f.h.Has(frame.FlagGapFilled) && len(f.payload) == 0:
			kinds = append(kinds, "loss")
		case bytes.Equal(f.payload, opusSilence):
			kinds = append(kinds, "silence")
		default:
			kinds = append(kinds, "media")
		}
		if f.h.Seq != uint32(i) {
			t.Fatalf("frame %d has seq %d", i, f.h.Seq)
		}
	}
	wantKinds := make([]string, 0, want)
	for i := 0; i < want; i++ {
		k := "media"
		switch {
		case i == 5 || i == 6:
			k = "loss"
		case i >= 13 && i <= 16:
			k = "silence"
		}
		wantKinds = append(wantKinds, k)
	}
	if diff := cmp.Diff(wantKinds, kinds); diff != "" {
		t.Fatalf("frame kinds (-want +got):\n%s", diff)
	}
}

// TestAnswerCandidates checks that every session's answer offers the one shared UDP port, and
// that with public IPs configured the answer offers those instead of the socket's address.
func TestAnswerCandidates(t *testing.T) {
	cfg := testConfig()
	cfg.PublicIPs = []string{"203.0.113.7"}
	cfg.ConnectTimeout = time.Second
	e := startEnv(t, 1, cfg)
	port := strconv.Itoa(e.whip.UDPAddr().(*net.UDPAddr).Port)
	offer := offerSDP(t, "pcmu")
	var fps []string
	for i := 0; i < 2; i++ {
		res, body := do(t, "POST", e.url, tokenAcme, "application/sdp", offer)
		if res.StatusCode != 201 {
			t.Fatalf("POST: %d %s", res.StatusCode, body)
		}
		var cands []string
		for _, l := range strings.Split(body, "\r\n") {
			if strings.HasPrefix(l, "a=candidate:") {
				cands = append(cands, l)
			}
			if strings.HasPrefix(l, "a=fingerprint:") {
				fps = append(fps, l)
			}
		}
		for _, c := range cands {
			if !strings.Contains(c, " 203.0.113.7 "+port+" typ host") {
				t.Fatalf("answer candidates %q, want host candidates 203.0.113.7 %s only", cands, port)
			}
		}
		if len(cands) == 0 {
			t.Fatal("answer has no candidate")
		}
		if !strings.Contains(body, "a=rtpmap:0 PCMU/8000") || strings.Contains(body, "opus") {
			t.Fatalf("answer does not select PCMU alone:\n%s", body)
		}
	}
	if len(fps) < 2 || fps[0] != fps[len(fps)-1] {
		t.Fatalf("sessions use different certificates: %q", fps)
	}
}

// TestOpusOfferParameters checks that Opus is accepted whatever fmtp parameters the client's
// offer carries.
func TestOpusOfferParameters(t *testing.T) {
	cfg := testConfig()
	cfg.ConnectTimeout = time.Second
	e := startEnv(t, 1, cfg)
	offer := offerSDP(t, "opus")
	for _, fmtp := range []string{"minptime=20;useinbandfec=0", "maxplaybackrate=16000;stereo=1;sprop-stereo=1;usedtx=1;cbr=1", ""} {
		var lines []string
		for _, l := range strings.Split(offer, "\r\n") {
			if strings.HasPrefix(l, "a=fmtp:111 ") {
				if fmtp == "" {
					continue
				}
				l = "a=fmtp:111 " + fmtp
			}
			lines = append(lines, l)
		}
		res, body := do(t, "POST", e.url, tokenAcme, "application/sdp", strings.Join(lines, "\r\n"))
		if res.StatusCode != 201 || !strings.Contains(body, "a=rtpmap:111 opus/48000/2") || strings.Contains(body, "m=audio 0 ") {
			t.Errorf("fmtp %q: %d\n%s", fmtp, res.StatusCode, body)
		}
	}
}
