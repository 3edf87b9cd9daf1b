package whip

import (
	"context"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/pion/rtcp"
	"github.com/pion/webrtc/v4/pkg/media"
)

// TestReceiverReportCounts checks the report's loss, fraction, extended sequence number and
// jitter over a sequence number wrap, a gap, a late packet and a duplicate.
func TestReceiverReportCounts(t *testing.T) {
	r := newReceiverReports(0xabcd, 8000)
	const step = int64(20 * time.Millisecond)
	now := int64(1e18)
	seq, ts := uint16(65530), uint32(1000)
	for range 10 { // 65530 … 3, wrapping
		r.packet(seq, ts, now)
		seq, ts, now = seq+1, ts+160, now+step
	}
	if r.due(now) {
		t.Fatal("due before a second has passed")
	}
	rep := r.report(now).Reports[0]
	if rep.SSRC != 0xabcd || rep.TotalLost != 0 || rep.FractionLost != 0 || rep.LastSequenceNumber != 1<<16|3 || rep.Jitter != 0 {
		t.Fatalf("in-order report %+v", rep)
	}
	// 4 sent, 5 and 6 lost, 7 sent; 8 lost; 9 sent; then 8 late, 9 twice.
	for _, s := range []uint16{4, 7, 9, 8, 9} {
		r.packet(s, ts+uint32(s-4)*160, now)
		now += step
	}
	rep = r.report(now).Reports[0]
	// Expected 4..9 = 6, received 5 of which one a duplicate: lost 6-5 = 1, as RFC 3550 counts
	// (duplicates offset losses), fraction 1/6 of 256.
	if rep.TotalLost != 1 || rep.FractionLost != 256/6 || rep.LastSequenceNumber != 1<<16|9 {
		t.Fatalf("report after loss %+v", rep)
	}
	if rep.Jitter == 0 {
		t.Fatal("no jitter after packets out of their time")
	}
	if !r.due(now + int64(time.Second)) {
		t.Fatal("not due a second after the last report")
	}
}

// TestReceiverReportsReachSender checks that a sending peer gets RTCP receiver reports about its
// stream, with the loss it caused, now that no pion interceptor writes them.
func TestReceiverReportsReachSender(t *testing.T) {
	e := startEnv(t, 1, testConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dial(ctx, e.url, tokenAcme, "pcmu")
	if err != nil {
		t.Fatal(err)
	}
	defer c.hangup()
	sender := c.pc.GetSenders()[0]
	ssrc := uint32(sender.GetParameters().Encodings[0].SSRC)
	got := make(chan rtcp.ReceptionReport, 16)
	go func() {
		for {
			pkts, _, err := sender.ReadRTCP()
			if err != nil {
				return
			}
			for _, p := range pkts {
				if rr, ok := p.(*rtcp.ReceiverReport); ok {
					for _, r := range rr.Reports {
						if r.SSRC == ssrc {
							select {
							case got <- r:
							default:
							}
						}
					}
				}
			}
		}
	}()
	go func() {
		payload := make([]byte, 160)
		samples := make([]media.Sample, 150) // 3 s
		for i := range samples {
			samples[i] = media.Sample{Data: payload, Duration: frame.Duration}
		}
		samples[10].PrevDroppedPackets = 5 // the client skips 5 sequence numbers
		_ = c.sendSamples(ctx, samples)
	}()
	for {
		select {
		case r := <-got:
			if r.TotalLost >= 5 {
				t.Logf("receiver report: %+v", r)
				return
			}
		case <-ctx.Done():
			t.Fatal("no receiver report counting the 5 lost packets")
		}
	}
}

// TestReorderDeadlineWithoutMorePackets checks that the media loop's read deadline comes sooner
// when the cutter waits (it is otherwise left at the media timeout): a packet after a gap, then
// nothing, is released once the reorder window passes, not when the media timeout does.
func TestReorderDeadlineWithoutMorePackets(t *testing.T) {
	cfg := testConfig()
	cfg.MediaTimeout = 20 * time.Second
	e := startEnv(t, 1, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dial(ctx, e.url, tokenAcme, "pcmu")
	if err != nil {
		t.Fatal(err)
	}
	defer c.hangup()
	payload := make([]byte, 160)
	samples := make([]media.Sample, 7)
	for i := range samples {
		samples[i] = media.Sample{Data: payload, Duration: frame.Duration}
	}
	samples[6].PrevDroppedPackets = 1 // the last packet comes after a gap and waits for it
	if err := c.sendSamples(ctx, samples); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	eventually(t, 5*time.Second, "the packet after the gap at the worker", func() bool { return len(processed.frames(c.call)) >= 8 })
	t.Logf("released %v after the last packet was sent", time.Since(sent).Round(time.Millisecond))
	got := processed.frames(c.call)
	if !got[6].h.Has(frame.FlagGapFilled) || got[7].h.Has(frame.FlagGapFilled) {
		t.Fatalf("frames 6 and 7: %+v, %+v; want the lost one gap-filled, then media", got[6].h, got[7].h)
	}
}
