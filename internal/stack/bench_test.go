package stack

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/natsauth"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

var benchFrames atomic.Int64

type countProc struct{}

func init() {
	proc.Register("testcount", func(proc.Options) (proc.Processor, error) { return countProc{}, nil })
}

func (countProc) Start(proc.Call) (proc.Handler, error) { return countProc{}, nil }
func (countProc) Frame(*proc.Frame)                     { benchFrames.Add(1) }
func (countProc) Stop(string)                           {}

func waitCount(b *testing.B, f func() int64, want int64) {
	deadline := time.Now().Add(60 * time.Second)
	for f() < want {
		if time.Now().After(deadline) {
			b.Fatalf("saw %d of %d", f(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

// BenchmarkRawNATS is the baseline: one publisher to one subscriber, frame-sized messages.
func BenchmarkRawNATS(b *testing.B) {
	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	pub, _ := nats.Connect(srv.URL())
	sub, _ := nats.Connect(srv.URL())
	defer pub.Close()
	defer sub.Close()
	var n atomic.Int64
	s, _ := sub.Subscribe("audio.acme.c.caller", func(*nats.Msg) { n.Add(1) })
	_ = s.SetPendingLimits(-1, -1)
	_ = sub.Flush()
	msg := make([]byte, frame.HeaderLen+160)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_ = pub.Publish("audio.acme.c.caller", msg)
	}
	_ = pub.Flush()
	waitCount(b, n.Load, int64(b.N))
}

// BenchmarkCallPath is the same flow through callrouter: ingest Call.Send (envelope, ring,
// publish) → NATS → worker (parse, bounded queue, order check, processor).
func BenchmarkCallPath(b *testing.B) { benchCallPath(b, Config{}) }

// BenchmarkCallPathPermissions is BenchmarkCallPath with NATS permissions on, without TLS.
func BenchmarkCallPathPermissions(b *testing.B) {
	set, err := natsauth.NewSet(natsauth.Local([]string{"default"}))
	if err != nil {
		b.Fatal(err)
	}
	benchCallPath(b, Config{Auth: set})
}

// BenchmarkCallPathSecure is BenchmarkCallPath as production runs NATS: permissions on (each
// component signs in with its role's nkey) and TLS on every client connection.
func BenchmarkCallPathSecure(b *testing.B) {
	dir := b.TempDir()
	if err := natsauth.WriteDevTLS(dir, nil, time.Hour); err != nil {
		b.Fatal(err)
	}
	set, err := natsauth.NewSet(natsauth.Local([]string{"default"}))
	if err != nil {
		b.Fatal(err)
	}
	benchCallPath(b, Config{Auth: set, TLSCA: filepath.Join(dir, natsauth.CAFile),
		Embedded: bus.EmbeddedOptions{TLSCert: filepath.Join(dir, natsauth.ServerCertFile), TLSKey: filepath.Join(dir, natsauth.ServerKeyFile)}})
}

func benchCallPath(b *testing.B, cfg Config) {
	wc := testWorkerConfig()
	wc.Processors = []string{"testcount"}
	wc.QueueFrames = 1 << 20
	wc.PendingMsgs = 1 << 20
	wc.MaxFrameAge = time.Hour
	cfg.Worker, cfg.Log = wc, zerolog.Nop()
	s, err := Start(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for len(s.Routers[0].Workers()) == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	rec := tone(b, 1)
	spec := rec.Spec("acme", "bench", nil)
	spec.Legs = spec.Legs[:1]
	c, err := s.Ingest.StartCall(context.Background(), spec)
	if err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, 160)
	base := benchFrames.Load()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_ = c.Send(0, payload, 0)
	}
	waitCount(b, func() int64 { return benchFrames.Load() - base }, int64(b.N))
	b.StopTimer()
	c.End("bench")
}
