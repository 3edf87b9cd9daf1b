package loadtest

import (
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media"
)

// threadCPU is the calling OS thread's CPU time (Linux RUSAGE_THREAD).
func threadCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(1 /* RUSAGE_THREAD */, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// whipPair connects a sending peer connection made by the WHIP target's API to a receiving one
// that reads and discards its track.
func whipPair(b *testing.B, tgt *whipTarget, rtpTrack bool) (webrtc.TrackLocal, func()) {
	pc, err := tgt.api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		b.Fatal(err)
	}
	var track webrtc.TrackLocal
	codec := webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypePCMU, ClockRate: 8000}
	if rtpTrack {
		track, err = webrtc.NewTrackLocalStaticRTP(codec, "audio", "loadtest")
	} else {
		track, err = webrtc.NewTrackLocalStaticSample(codec, "audio", "loadtest")
	}
	if err != nil {
		b.Fatal(err)
	}
	if _, err := pc.AddTransceiverFromTrack(track, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
		b.Fatal(err)
	}
	rx, err := tgt.api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		b.Fatal(err)
	}
	rx.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		buf := make([]byte, 1500)
		for {
			if _, _, err := tr.Read(buf); err != nil {
				return
			}
		}
	})
	connected := make(chan struct{}, 1)
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		if s == webrtc.PeerConnectionStateConnected {
			connected <- struct{}{}
		}
	})
	offer, _ := pc.CreateOffer(nil)
	g := webrtc.GatheringCompletePromise(pc)
	_ = pc.SetLocalDescription(offer)
	<-g
	if err := rx.SetRemoteDescription(*pc.LocalDescription()); err != nil {
		b.Fatal(err)
	}
	answer, _ := rx.CreateAnswer(nil)
	g = webrtc.GatheringCompletePromise(rx)
	_ = rx.SetLocalDescription(answer)
	<-g
	if err := pc.SetRemoteDescription(*rx.LocalDescription()); err != nil {
		b.Fatal(err)
	}
	select {
	case <-connected:
	case <-time.After(20 * time.Second):
		b.Fatal("not connected")
	}
	return track, func() { pc.Close(); rx.Close() }
}

// BenchmarkWHIPSend measures the WHIP mode's cost per RTP packet on the sending thread (the
// pacer shard's: pion writes synchronously, SRTP and the UDP send included; the receiving peers'
// CPU is not counted): WriteSample, as whipCall.Send does, against WriteRTP of a reused packet,
// the alternative that skips pion's packetizer. 20 connected pairs on loopback, packets sent
// round-robin. go test -run XXX -bench 'WHIPSend/(sample|rtp)$' -benchtime 20000x ./loadtest/
func BenchmarkWHIPSend(b *testing.B) {
	for _, mode := range []string{"sample", "rtp"} {
		b.Run(mode, func(b *testing.B) {
			tgt, err := newWHIPTarget("http://127.0.0.1:1/whip", "", true, 0)
			if err != nil {
				b.Fatal(err)
			}
			const n = 20
			var tracks []webrtc.TrackLocal
			for range n {
				tr, closeFn := whipPair(b, tgt, mode == "rtp")
				defer closeFn()
				tracks = append(tracks, tr)
			}
			payload := make([]byte, 160)
			pkts := make([]rtp.Packet, n)
			for i := range pkts {
				pkts[i].Header = rtp.Header{Version: 2, SequenceNumber: 1, Timestamp: 1}
				pkts[i].Payload = payload
			}
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			b.ResetTimer()
			c0 := threadCPU()
			for i := range b.N {
				k := i % n
				if mode == "rtp" {
					p := &pkts[k]
					p.SequenceNumber++
					p.Timestamp += 160
					_ = tracks[k].(*webrtc.TrackLocalStaticRTP).WriteRTP(p)
				} else {
					_ = tracks[k].(*webrtc.TrackLocalStaticSample).WriteSample(media.Sample{Data: payload, Duration: frame.Duration})
				}
				if i%n == n-1 {
					time.Sleep(20 * time.Microsecond) // let the receivers keep up
				}
			}
			b.ReportMetric(float64(threadCPU()-c0)/float64(b.N), "thread-cpu-ns/pkt")
		})
	}
}
