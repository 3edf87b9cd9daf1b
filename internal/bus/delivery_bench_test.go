package bus

import (
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// BenchmarkSubDelivery compares the ways nats.go hands a subscription's messages to the code that
// takes them, in the worker's shape: one audio.<tenant>.<call>.* subscription per call, two legs
// a call, 192-byte frames published by one connection, the calls split over two subscriber
// connections (workers), each message taken on a goroutine of its call:
//
//   - chan: ChanSubscribe into the call's own buffered channel, a goroutine per call ranging
//     over it (the worker's delivery: the read loop's chansend wakes the call's goroutine);
//   - callback: Subscribe with a callback (nats.go's goroutine per subscription and its pending
//     list, woken by a sync.Cond: the raw baseline's delivery);
//   - sync: SubscribeSync, a goroutine per call looping on NextMsg (a channel inside nats.go,
//     with a timer per wait);
//   - shared: every subscription of a connection into one channel, read by one goroutine (not a
//     goroutine per call: what the wake-ups alone cost).
//
// cpu-ns/msg is the whole process's CPU (server, publisher, subscribers) per message: the server
// and the publisher do the same work in every case, so the differences are the subscriber side's.
// A round publishes each call's two frames in turn, at most two rounds in flight so that no
// subscriber falls behind. rate=50 paces the rounds at one per 20 ms, spread over the round in
// 1 ms slices (each call's two frames 20 ms apart, as in a load test: the read loops and the
// calls' goroutines park between them); rate=max publishes the rounds back to back.
func BenchmarkSubDelivery(b *testing.B) {
	for _, paced := range []bool{true, false} {
		for _, mode := range []string{"chan", "callback", "sync", "shared"} {
			rate := "max"
			if paced {
				rate = "50"
			}
			b.Run(fmt.Sprintf("calls=2500/rate=%s/%s", rate, mode), func(b *testing.B) { benchDelivery(b, 2500, mode, paced) })
		}
	}
}

func benchDelivery(b *testing.B, calls int, mode string, paced bool) {
	srv, err := StartEmbedded(EmbeddedOptions{Port: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown()
	url := srv.ClientURL()
	pub, err := nats.Connect(url)
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
	// The callers' state, one line each, touched by every message as a call's state is.
	type callState struct {
		n int64
		_ [56]byte
	}
	state := make([]callState, calls)
	var got atomic.Int64
	take := func(m *nats.Msg, c int) {
		if len(m.Data) == 192 {
			state[c].n++
			got.Add(1)
		}
	}
	done := make(chan struct{})
	var running atomic.Int64
	defer func() {
		close(done)
		for deadline := time.Now().Add(time.Minute); running.Load() > 0 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
	}()
	for w := range 2 {
		nc, err := nats.Connect(url)
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		var shared chan *nats.Msg
		if mode == "shared" {
			shared = make(chan *nats.Msg, 500*calls/2)
			index := make(map[*nats.Subscription]int, calls/2)
			defer func() {
				for s := range index {
					_ = s.Unsubscribe()
				}
			}()
			for c := w; c < calls; c += 2 {
				s, err := nc.ChanSubscribe("audio.loadtest.call-"+strconv.Itoa(c)+".*", shared)
				if err != nil {
					b.Fatal(err)
				}
				index[s] = c
			}
			running.Add(1)
			go func() {
				defer running.Add(-1)
				for {
					select {
					case m := <-shared:
						take(m, index[m.Sub])
					case <-done:
						return
					}
				}
			}()
		}
		for c := w; c < calls && mode != "shared"; c += 2 {
			subj := "audio.loadtest.call-" + strconv.Itoa(c) + ".*"
			switch mode {
			case "chan":
				ch := make(chan *nats.Msg, 500)
				s, err := nc.ChanSubscribe(subj, ch)
				if err != nil {
					b.Fatal(err)
				}
				defer s.Unsubscribe()
				running.Add(1)
				go func() {
					defer running.Add(-1)
					for {
						select {
						case m := <-ch:
							take(m, c)
						case <-done:
							return
						}
					}
				}()
			case "callback":
				s, err := nc.Subscribe(subj, func(m *nats.Msg) { take(m, c) })
				if err != nil {
					b.Fatal(err)
				}
				defer s.Unsubscribe()
				_ = s.SetPendingLimits(500, -1)
			case "sync":
				s, err := nc.SubscribeSync(subj)
				if err != nil {
					b.Fatal(err)
				}
				_ = s.SetPendingLimits(500, -1)
				running.Add(1)
				go func() {
					defer running.Add(-1)
					for {
						m, err := s.NextMsg(time.Second)
						switch {
						case err == nil:
							take(m, c)
						case err == nats.ErrTimeout:
						default:
							return // closed: the deferred Unsubscribe below ends it
						}
					}
				}()
				defer s.Unsubscribe()
			}
		}
		if err := nc.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	var subj []string
	for c := range calls {
		for _, leg := range []string{"caller", "agent"} {
			subj = append(subj, "audio.loadtest.call-"+strconv.Itoa(c)+"."+leg)
		}
	}
	data := make([]byte, 192)
	b.ResetTimer()
	cpu0 := cpuTime()
	sent := int64(0)
	const slices = 20 // a round's 1 ms slices
	start := time.Now()
	for round := 0; sent < int64(b.N); round++ {
		for i, s := range subj {
			if paced && i%(len(subj)/slices) == 0 {
				slice := round*slices + i/(len(subj)/slices)
				time.Sleep(time.Until(start.Add(time.Duration(slice) * time.Millisecond)))
			}
			if err := pub.Publish(s, data); err != nil {
				b.Fatal(err)
			}
			sent++
		}
		awaitDelivered(b, &got, sent, int64(2*len(subj)))
	}
	awaitDelivered(b, &got, sent, 0)
	b.StopTimer()
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(sent), "cpu-ns/msg")
}
