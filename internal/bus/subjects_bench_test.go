package bus

import (
	"fmt"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// cpuTime returns the CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkPublisherSubjects is the audio path's shape through an embedded server: 192-byte
// frames published to audio.<tenant>.<call>.<leg>, both legs of every call in turn, by one or
// more publisher connections (ingest nodes; a call's frames always on the same one), read by two
// subscriber connections (workers) holding one audio.<tenant>.<call>.* subscription per call.
// nats-server keeps, per publishing connection, a cache of the subscriptions matching up to 512
// subjects (any subscription change in the account clears it; none happens here). cpu-ns/msg is
// the whole process's CPU (server, publishers, subscribers) per frame: compare it, not ns/op, on
// a shared machine. The frames go as fast as the subscribers take them, not in real time.
func BenchmarkPublisherSubjects(b *testing.B) {
	for _, tc := range []struct{ calls, publishers int }{{1000, 1}, {1000, 4}, {2500, 1}, {2500, 10}} {
		b.Run(fmt.Sprintf("calls=%d/publishers=%d", tc.calls, tc.publishers), func(b *testing.B) {
			benchPublishers(b, tc.calls, tc.publishers)
		})
	}
}

func benchPublishers(b *testing.B, calls, npub int) {
	srv, err := StartEmbedded(EmbeddedOptions{Port: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown()
	url := srv.ClientURL()
	var pubs []*nats.Conn
	for range npub {
		p, err := nats.Connect(url)
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		pubs = append(pubs, p)
	}
	var got atomic.Int64
	for w := range 2 {
		nc, err := nats.Connect(url)
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		ch := make(chan *nats.Msg, 16*calls)
		for c := w; c < calls; c += 2 {
			s, err := nc.ChanSubscribe("audio.loadtest.call-"+strconv.Itoa(c)+".*", ch)
			if err != nil {
				b.Fatal(err)
			}
			_ = s.SetPendingLimits(-1, -1)
		}
		if err := nc.Flush(); err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{})
		defer func() { nc.Close(); close(done) }()
		go func() {
			for {
				select {
				case <-ch:
					got.Add(1)
				case <-done:
					return
				}
			}
		}()
	}
	type pubSubj struct {
		p *nats.Conn
		s string
	}
	var subj []pubSubj
	for c := range calls {
		for _, leg := range []string{"caller", "agent"} {
			subj = append(subj, pubSubj{pubs[c%npub], "audio.loadtest.call-" + strconv.Itoa(c) + "." + leg})
		}
	}
	data := make([]byte, 192)
	b.ResetTimer()
	cpu0 := cpuTime()
	sent := int64(0)
	for sent < int64(b.N) {
		for _, s := range subj {
			if err := s.p.Publish(s.s, data); err != nil {
				b.Fatal(err)
			}
			sent++
		}
		// At most two rounds in flight: no subscriber falls behind.
		awaitDelivered(b, &got, sent, int64(2*len(subj)))
	}
	awaitDelivered(b, &got, sent, 0)
	b.StopTimer()
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(sent), "cpu-ns/msg")
}

// awaitDelivered waits until at most ahead of the sent messages have yet to arrive (got counts
// the arrivals), failing after a minute.
func awaitDelivered(b *testing.B, got *atomic.Int64, sent, ahead int64) {
	for deadline := time.Now().Add(time.Minute); sent-got.Load() > ahead; {
		if time.Now().After(deadline) {
			b.Fatalf("received %d of %d", got.Load(), sent)
		}
		time.Sleep(100 * time.Microsecond)
	}
}
