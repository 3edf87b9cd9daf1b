package ingest

import (
	"testing"
	"time"
)

func TestBackoffDoublesToItsBoundWithJitter(t *testing.T) {
	seen := map[time.Duration]bool{}
	for attempt := 0; attempt < 40; attempt++ {
		want := min(placeBackoff<<min(attempt, 16), placeBackoffMax)
		for i := 0; i < 20; i++ {
			d := backoff(attempt, placeBackoff, placeBackoffMax)
			if d < want/2 || d > want {
				t.Fatalf("attempt %d: wait %v outside [%v, %v]", attempt, d, want/2, want)
			}
			seen[d] = true
		}
	}
	if len(seen) < 100 {
		t.Errorf("only %d distinct waits: no jitter", len(seen))
	}
}
