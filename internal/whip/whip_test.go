package whip

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
)

// TestRecordedCallsReachWorker sends a recorded WAV through WHIP in both codecs and checks, at
// the worker, every frame complete, in order and byte for byte what the client sent; for PCMU it
// also checks the level where the recording speaks.
func TestRecordedCallsReachWorker(t *testing.T) {
	e := startEnv(t, 2, testConfig())
	for _, tc := range []struct {
		codec    string
		payloads [][]byte
	}{
		{"opus", oggOpusPackets(t, "testdata/speech.opus")},
		{"pcmu", pcmuFrames(t, "testdata/speech-pcmu.wav")},
	} {
		t.Run(tc.codec, func(t *testing.T) {
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
