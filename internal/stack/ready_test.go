package stack

import (
	"context"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/ingest"
)

// A call started the moment Start returns has its frames on one of the ingest node's publishing
// connections, not on the node's own (control) connection, which it would keep for life: Start
// returns once the node is ready.
func TestCallStartedAtOnceGoesOnAPublishingConn(t *testing.T) {
	s, err := Start(fastConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	started := make(chan *ingest.Call, 1)
	go func() {
		c, _ := s.Ingest.StartCall(context.Background(), tone(t, 1).Spec("acme", "early", nil)) // placed or not: its connection is what counts
		started <- c
	}()
	eventually(t, 10*time.Second, "the call to be owned", func() bool { return len(s.Ingest.Calls()) > 0 })
	own := counter(t, s.Registry(), "callrouter_ingest_publish_conn_calls", map[string]string{"conn": "1"})
	media := counter(t, s.Registry(), "callrouter_ingest_publish_conn_calls", map[string]string{"conn": "2"})
	if own != 0 || media != 1 {
		t.Errorf("calls on the node's own connection %v, on connection 2 %v; want 0 and 1", own, media)
	}
	select {
	case c := <-started:
		if c != nil {
			c.End("test over")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("StartCall did not return")
	}
}
