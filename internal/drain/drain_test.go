package drain

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestBounds(t *testing.T) {
	var gauge atomic.Int64
	s := New(3, 2, func(n int) { gauge.Store(int64(n)) })
	for i, tc := range []struct {
		tenant string
		want   error
	}{{"acme", nil}, {"acme", nil}, {"acme", ErrFull}, {"globex", nil}, {"globex", ErrFull}, {"", ErrFull}} {
		if err := s.Acquire(tc.tenant); !errors.Is(err, tc.want) {
			t.Fatalf("acquire %d (%q): %v, want %v", i, tc.tenant, err, tc.want)
		}
	}
	if s.Live() != 3 || gauge.Load() != 3 {
		t.Fatalf("live %d gauge %d, want 3", s.Live(), gauge.Load())
	}
	s.Release("acme")
	if err := s.Acquire(""); err != nil { // a tenant learnt later (Twilio's start)
		t.Fatal(err)
	}
	if !s.Tenant("acme") || s.Tenant("acme") {
		t.Fatal("Tenant: want the second acme slot, then no third")
	}
	s.Release("acme")
	s.Release("acme")
	s.Release("globex")
	if s.Live() != 0 || gauge.Load() != 0 || len(s.tenants) != 0 {
		t.Fatalf("after every release: live %d gauge %d tenants %v", s.Live(), gauge.Load(), s.tenants)
	}
}

// Drain refuses new sessions at once, returns as soon as the last live one ends, and gives up at
// its deadline with the number still live; Wait then waits for them without one.
func TestDrain(t *testing.T) {
	s := New(10, 0, nil)
	for i := 0; i < 3; i++ {
		if err := s.Acquire("acme"); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 2; i++ {
			time.Sleep(20 * time.Millisecond)
			s.Release("acme")
		}
	}()
	start := time.Now()
	if n := s.Drain(300 * time.Millisecond); n != 1 {
		t.Fatalf("Drain left %d, want 1 (one never ends)", n)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("Drain returned after %v, before its deadline", took)
	}
	if err := s.Acquire("acme"); !errors.Is(err, ErrDraining) || !s.Draining() {
		t.Fatalf("acquire while draining: %v", err)
	}
	wg.Wait()
	done := make(chan struct{})
	go func() { s.Wait(); close(done) }()
	select {
	case <-done:
		t.Fatal("Wait returned with a session live")
	case <-time.After(50 * time.Millisecond):
	}
	s.Release("acme")
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after the last release")
	}

	quick := New(1, 0, nil)
	if err := quick.Acquire(""); err != nil {
		t.Fatal(err)
	}
	go func() { time.Sleep(20 * time.Millisecond); quick.Release("") }()
	start = time.Now()
	if n := quick.Drain(10 * time.Second); n != 0 || time.Since(start) > 5*time.Second {
		t.Fatalf("Drain: %d left after %v, want 0 as soon as the session ended", n, time.Since(start))
	}
	if n := New(1, 0, nil).Drain(0); n != 0 {
		t.Fatalf("Drain(0) of nothing: %d", n)
	}
}
