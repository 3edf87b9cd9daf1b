package guard

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
)

func TestHandlerRecoversAndCounts(t *testing.T) {
	before := testutil.ToFloat64(Panics.WithLabelValues("test_handler"))
	h := Handler("test_handler", zerolog.Nop(), func(*nats.Msg) { panic("boom") })
	h(&nats.Msg{Subject: "x"}) // must not panic
	if got := testutil.ToFloat64(Panics.WithLabelValues("test_handler")) - before; got != 1 {
		t.Fatalf("panics counted = %v, want 1", got)
	}
}

func TestRecoverCallsOnPanic(t *testing.T) {
	var got any
	func() {
		defer Recover("test_call", zerolog.Nop(), func(v any) { got = v })
		panic("bad frame")
	}()
	if got != "bad frame" {
		t.Fatalf("onPanic got %v", got)
	}
}

func TestGroupRefusesAfterClose(t *testing.T) {
	var g Group
	var ran atomic.Int32
	release := make(chan struct{})
	if !g.Go(func() { <-release; ran.Add(1) }) {
		t.Fatal("Go refused before Close")
	}
	done := make(chan struct{})
	go func() { g.Close(); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for !g.Closed() {
		if time.Now().After(deadline) {
			t.Fatal("Close did not begin")
		}
		time.Sleep(time.Millisecond)
	}
	if g.Go(func() { ran.Add(10) }) {
		t.Fatal("Go accepted after Close began")
	}
	select {
	case <-done:
		t.Fatal("Close returned before the running goroutine ended")
	default:
	}
	close(release)
	<-done
	if ran.Load() != 1 {
		t.Fatalf("ran = %d, want 1", ran.Load())
	}
	g.Close() // idempotent
}

func TestRegisterTwice(t *testing.T) {
	reg := prometheus.NewRegistry()
	Register(reg)
	Register(reg)
}

// Do runs on the caller's goroutine, Close waits for one running, and Do is refused once Close
// has begun: a NATS callback in progress when its subscriber shuts down is waited for.
func TestGroupDoIsWaitedFor(t *testing.T) {
	var g Group
	inside, release := make(chan struct{}), make(chan struct{})
	went := make(chan bool, 1)
	go func() { went <- g.Do(func() { close(inside); <-release }) }()
	<-inside
	done := make(chan struct{})
	go func() { g.Close(); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for !g.Closed() {
		if time.Now().After(deadline) {
			t.Fatal("Close did not begin")
		}
		time.Sleep(time.Millisecond)
	}
	if g.Do(func() { t.Error("Do ran after Close began") }) {
		t.Fatal("Do accepted after Close began")
	}
	select {
	case <-done:
		t.Fatal("Close returned while a Do was running")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	<-done
	if !<-went {
		t.Fatal("the running Do reported false")
	}
}
