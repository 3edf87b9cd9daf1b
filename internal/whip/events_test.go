package whip

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

type streamed struct {
	Kind   string          `json:"kind"`
	Source string          `json:"source"`
	State  string          `json:"state"`
	Reason string          `json:"reason"`
	Data   json.RawMessage `json:"data"`
}

// getEvents requests a session's event stream with a bearer token ("" for none).
func getEvents(ctx context.Context, url, token string) (*http.Response, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return clientOf(ctx).Do(req)
}

// follow reads a session's event stream, with the session's token, until it ends.
func follow(t *testing.T, ctx context.Context, url, token string) <-chan streamed {
	t.Helper()
	res, err := getEvents(ctx, url, token)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("event stream: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	out := make(chan streamed, 256)
	go func() {
		defer close(out)
		defer res.Body.Close()
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var e streamed
			if json.Unmarshal([]byte(data), &e) == nil {
				out <- e
			}
		}
	}()
	return out
}

// TestEventStream follows a call's event stream: the session's states, ingest's start and end,
// the worker's accounting and the endpoint's media report, then the stream closes.
func TestEventStream(t *testing.T) {
	cfg := testConfig()
	cfg.Linger = time.Second
	e := startEnv(t, 1, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dial(ctx, e.url, tokenAcme, "pcmu")
	if err != nil {
		t.Fatal(err)
	}
	events := follow(t, ctx, c.location+"/events", tokenAcme)
	eventually(t, 5*time.Second, "the connected-sessions gauge", func() bool {
		return metricValue(t, e, "callrouter_whip_sessions", "state", "connected") == 1
	})
	frames := pcmuFrames(t, "testdata/speech-pcmu.wav")[:25]
	if err := c.send(ctx, frames); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "frames at the worker", func() bool { return len(processed.frames(c.call)) >= len(frames) })
	if _, err := c.hangup(); err != nil {
		t.Fatal(err)
	}
	seen := map[string]streamed{}
	var order []string
	for ev := range events {
		k := ev.Kind
		if k == "state" {
			k += ":" + ev.State
		}
		seen[k] = ev
		order = append(order, k)
	}
	for _, k := range []string{"state:connected", "start", "end", "accounting", "media", "state:ended"} {
		if _, ok := seen[k]; !ok {
			t.Errorf("no %s event; got %v", k, order)
		}
	}
	if ev := seen["accounting"]; !strings.HasPrefix(ev.Source, "worker/") || !strings.Contains(string(ev.Data), `"processed":25`) {
		t.Errorf("accounting event %s from %s", ev.Data, ev.Source)
	}
	if ev := seen["media"]; !strings.Contains(string(ev.Data), `"frames":25`) || !strings.Contains(string(ev.Data), `"lost_packets":0`) {
		t.Errorf("media event %s", ev.Data)
	}
	if ev := seen["state:ended"]; ev.Reason != reasonDelete {
		t.Errorf("ended with %q", ev.Reason)
	}
	t.Logf("events: %v", order)
	if v := metricValue(t, e, "callrouter_whip_requests_total", "code", "201"); v != 1 {
		t.Errorf("requests_total{code=201} = %v", v)
	}
	if v := metricValue(t, e, "callrouter_whip_sessions_ended_total", "reason", "hangup"); v != 1 {
		t.Errorf("sessions_ended_total{reason=hangup} = %v", v)
	}
}

// metricValue returns the value of the metric with the given label value (summed over the
// other labels).
func metricValue(t *testing.T, e *env, name, label, value string) float64 {
	t.Helper()
	mfs, err := e.stack.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					sum += m.GetGauge().GetValue() + m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}
