package stack

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
)

// startCluster starts n embedded nats-servers joined by routes.
func startCluster(t *testing.T, n int) []*bus.Embedded {
	t.Helper()
	var nodes []*bus.Embedded
	for i := 0; i < n; i++ {
		var routes []string
		if i > 0 {
			routes = []string{nodes[0].RouteURL()}
		}
		e, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1, ClusterName: "test", ClusterPort: -1, Routes: routes, ServerName: fmt.Sprintf("n%d", i+1)})
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, e)
		t.Cleanup(e.Close)
	}
	eventually(t, 20*time.Second, "a full mesh of routes", func() bool {
		for _, e := range nodes {
			if e.NumRoutes() < n-1 {
				return false
			}
		}
		return true
	})
	return nodes
}

func TestCallPathOnThreeNodeCluster(t *testing.T) {
	recorded.reset()
	nodes := startCluster(t, 3)
	cfg := fastConfig(t)
	cfg.Workers = 2
	cfg.NATSURL = nodes[0].URL()
	cfg.URLFor = func(name string) string {
		switch {
		case strings.HasPrefix(name, "ingest"):
			return nodes[0].URL()
		case name == "worker worker-1":
			return nodes[1].URL()
		case name == "worker worker-2":
			return nodes[2].URL()
		default: // routers
			return nodes[2].URL()
		}
	}
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitWorkers(t, s, 2)
	const calls, frames = 20, 50
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i, err := range playCalls(ctx, t, s, tone(t, frames), "cluster", calls, frames) {
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	eventually(t, 10*time.Second, "calls to finish", func() bool {
		return s.Workers[0].Calls() == 0 && s.Workers[1].Calls() == 0
	})
	checkComplete(t, "cluster", calls, 2, frames)
	for _, w := range s.Workers {
		if got := counter(t, s.Registry(), "callrouter_worker_offers_total", map[string]string{"worker": w.ID(), "result": "accepted"}); got == 0 {
			t.Errorf("%s took no calls; want both nodes' workers used", w.ID())
		}
	}
}
