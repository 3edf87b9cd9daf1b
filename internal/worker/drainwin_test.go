package worker

import (
	"context"
	"testing"
	"time"
)

// A burst of failures narrows the drain's window once, not once per failure; further failures of
// requests taken after that narrowing narrow it again, down to the floor; moves widen it again.
func TestDrainWindowHalvesOncePerWindowAndRecovers(t *testing.T) {
	d := newDrainWindow()
	ctx := t.Context()
	var gens []uint64
	for range drainWindowMax {
		g, ok := d.acquire(ctx, nil)
		if !ok {
			t.Fatal("acquire failed below the limit")
		}
		gens = append(gens, g)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	if _, ok := d.acquire(short, nil); ok {
		t.Fatalf("acquired a slot beyond the window of %d", drainWindowMax)
	}
	cancel()
	for _, g := range gens { // every request in the window failed (their offers timed out)
		d.release(g, false)
	}
	if d.limit != drainWindowMax/2 {
		t.Fatalf("after one window of failures the limit is %d, want %d", d.limit, drainWindowMax/2)
	}
	for want := drainWindowMax / 4; ; want = max(want/2, drainWindowMin) {
		g, _ := d.acquire(ctx, nil)
		d.release(g, false)
		if d.limit != want {
			t.Fatalf("limit %d, want %d", d.limit, want)
		}
		if want == drainWindowMin {
			break
		}
	}
	g, _ := d.acquire(ctx, nil)
	d.release(g, false)
	if d.limit != drainWindowMin {
		t.Fatalf("limit %d went below the floor %d", d.limit, drainWindowMin)
	}
	for range 3 * drainWindowMax {
		g, _ := d.acquire(ctx, nil)
		d.release(g, true)
	}
	if d.limit != drainWindowMax {
		t.Fatalf("after moves the limit is %d, want it back at %d", d.limit, drainWindowMax)
	}
}

// A request waiting for a slot gives up when its call ends.
func TestDrainWindowWaitEndsWithCall(t *testing.T) {
	d := newDrainWindow()
	d.limit = 1
	g, _ := d.acquire(t.Context(), nil)
	done := make(chan struct{})
	res := make(chan bool, 1)
	go func() {
		_, ok := d.acquire(t.Context(), done)
		res <- ok
	}()
	close(done)
	select {
	case ok := <-res:
		if ok {
			t.Fatal("acquired a slot of a full window")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("waiter did not notice its call ended")
	}
	d.release(g, true)
}
