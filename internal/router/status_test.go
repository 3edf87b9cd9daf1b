package router

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/peertest"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
)

// statusCluster runs a router and, on the bus, what it hears from a worker and an ingest node
// holding one call of tenant acme (heartbeats every 100 ms until the test ends), with that call's
// placed and gap events and a refusal. It returns the status page's server.
func statusCluster(t *testing.T) *httptest.Server {
	t.Helper()
	r, nc := testRouter(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	beat := func() {
		_ = bus.Publish(nc, subjects.Heartbeat(subjects.Worker, "w1"), wire.WorkerHeartbeat{V: wire.V, ID: "w1", Pool: "default", Mode: "session",
			Capacity: 10, Active: 1, LagMS: 12.5, Ready: true, IntervalMS: 100,
			Calls: []wire.WorkerCall{{Tenant: "acme", Call: "c-1", Epoch: 1, Ingest: "i1", Progress: []session.LegSeq{{Leg: 0, Next: 250}, {Leg: 1, Next: 249}}}}})
		_ = bus.Publish(nc, subjects.Heartbeat(subjects.Ingest, "i1"), wire.IngestHeartbeat{V: wire.V, ID: "i1", IntervalMS: 100,
			Calls: []wire.IngestCall{{Tenant: "acme", Call: "c-1", Epoch: 1, Placements: []wire.Placement{{Pool: "default", Worker: "w1"}}}}})
	}
	go func() {
		defer close(done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			beat()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	now := time.Now().UTC()
	event := func(call, kind string, at time.Time, data string) {
		_ = bus.Publish(nc, subjects.Event("acme", call, kind), wire.Event{V: wire.V, Kind: kind, Tenant: "acme", Call: call, Epoch: 1, Time: at,
			Source: "router/r1", Data: json.RawMessage(data)})
	}
	event("c-1", "start", now, `{"ingest":"i1"}`)
	event("c-1", "placed", now.Add(3*time.Millisecond), `{"placements":[{"pool":"default","worker":"w1"}],"reason":"new"}`)
	event("c-1", "gap", now.Add(time.Second), `{"leg":0,"from":10,"to":14,"cause":"network_loss"}`)
	event("c-2", "refused", now, `{"pool":"default","code":"no_capacity","reason":"full"}`)
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	r.Mount(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	deadline := time.Now().Add(10 * time.Second)
	for {
		o := r.statusOverview()
		h, _ := r.hist.get("acme", "c-1")
		if len(o.Workers) == 1 && len(o.Ingests) == 1 && o.TotalCalls == 1 && len(h.Events) == 3 {
			return srv
		}
		if time.Now().After(deadline) {
			t.Fatalf("the router did not hear the cluster: %+v, history %+v", o, h)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func getJSON(t *testing.T, url string, wantCode int, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantCode {
		t.Fatalf("GET %s: %d %s, want %d", url, resp.StatusCode, body, wantCode)
	}
	if v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("GET %s: %v in %s", url, err, body)
		}
	}
}

func TestStatusPageAPI(t *testing.T) {
	srv := statusCluster(t)
	var o StatusOverview
	getJSON(t, srv.URL+"/status/api/overview", http.StatusOK, &o)
	if len(o.Workers) != 1 || o.Workers[0].ID != "w1" || o.Workers[0].LagMS != 12.5 || len(o.Ingests) != 1 || o.Ingests[0].Active != 1 {
		t.Errorf("workers %+v, ingests %+v", o.Workers, o.Ingests)
	}
	if len(o.Tenants) != 1 || o.Tenants[0] != (TenantCalls{"acme", 1}) || len(o.Calls) != 1 || len(o.Calls[0].Progress) != 2 {
		t.Errorf("tenants %+v, calls %+v", o.Tenants, o.Calls)
	}
	last := o.PerMinute[len(o.PerMinute)-1]
	if len(o.PerMinute) != statusMinutes || last.Placed+o.PerMinute[len(o.PerMinute)-2].Placed != 1 || last.Refused+o.PerMinute[len(o.PerMinute)-2].Refused != 1 {
		t.Errorf("per minute: %+v", o.PerMinute)
	}
	var h wire.HistoryReply
	getJSON(t, srv.URL+"/status/api/call?tenant=acme&call=c-1", http.StatusOK, &h)
	if len(h.Events) != 3 || h.Events[0].Kind != "start" || h.Events[2].Kind != "gap" {
		t.Errorf("history: %+v", h)
	}
	getJSON(t, srv.URL+"/status/api/call?tenant=acme&call=nope", http.StatusNotFound, nil)
	getJSON(t, srv.URL+"/status/api/call?tenant=acme", http.StatusBadRequest, nil)

	resp, err := http.Get(srv.URL + "/status/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'none'") {
		t.Fatalf("GET /status/: %d %v", resp.StatusCode, resp.Header)
	}
	// Works offline: nothing is loaded from elsewhere, and data is never written as HTML.
	if m := regexp.MustCompile(`(?i)(<script[^>]+src|<link[^>]+href|https?://|@import|innerHTML)`).Find(page); m != nil {
		t.Errorf("the status page refers to %q", m)
	}
}

// innerChromiumEnv marks the test process re-run inside a private network namespace.
const innerChromiumEnv = "CALLROUTER_STATUS_NETNS"

// TestStatusPageInChromium loads the page in headless Chromium (inside `unshare -n`, loopback
// only, as internal/whip/e2e does) with a call selected, and reads the DOM the page's script
// built: workers, ingests, tenants, calls and the call's timeline. A screenshot is saved to
// $CALLROUTER_ARTIFACTS (or out/artifacts).
func TestStatusPageInChromium(t *testing.T) {
	if os.Getenv(innerChromiumEnv) != "" {
		statusInChromium(t)
		return
	}
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		peertest.Missing(t, "the status page test needs chromium: apt-get install chromium")
	}
	for _, tool := range []string{"unshare", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed to run the browser in a private network namespace: %v", tool, err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	shot := artifactPath(t, "status-page.png")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "-n", "sh", "-c", `ip link set lo up && exec "$0" -test.run '^TestStatusPageInChromium$' -test.v -test.count=1`, self)
	cmd.Env = append(os.Environ(), innerChromiumEnv+"=1", "CALLROUTER_STATUS_SHOT="+shot, "CHROMIUM="+chromium)
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestStatusPageInChromium")) {
		t.Fatalf("inside unshare -n: %v\n%s", err, out)
	}
	t.Logf("screenshot: %s", shot)
}

func statusInChromium(t *testing.T) {
	srv := statusCluster(t)
	url := srv.URL + "/status/#call=acme/c-1"
	run := func(extra ...string) []byte {
		dir := t.TempDir()
		args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
			"--disable-component-update", "--disable-sync", "--user-data-dir=" + dir, "--window-size=1280,900",
			"--virtual-time-budget=2500"}, extra...)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Getenv("CHROMIUM"), append(args, url)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("chromium %q: %v\n%s", extra, err, stderr.String())
		}
		return out
	}
	shot := os.Getenv("CALLROUTER_STATUS_SHOT")
	dom := string(run("--dump-dom", "--screenshot="+shot))
	for _, want := range []string{
		"router r1", "w1", "1/10", "12.5", "eligible", // workers
		"i1",                        // ingests
		"acme",                      // tenants and calls
		"default=w1", "0:250 1:249", // the call's row
		"Call acme/c-1 (in progress)",                // the timeline, opened from the URL
		"frames 10–14 lost (network_loss)",           // a gap with its cause
		"default → w1 (new)",                         // placed
		"1 placed, 0 refused", "0 placed, 1 refused", // per minute (either order in time)
	} {
		if !strings.Contains(dom, want) && !(strings.HasSuffix(want, "refused") && strings.Contains(dom, "1 placed, 1 refused")) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if m := regexp.MustCompile(`<span id="error">([^<]*)</span>`).FindStringSubmatch(dom); m == nil || m[1] != "" {
		t.Errorf("the page's error line: %q", m)
	}
	if t.Failed() {
		t.Logf("DOM:\n%s", dom)
	}
	if st, err := os.Stat(shot); err != nil || st.Size() < 10_000 {
		t.Errorf("screenshot %s: %v", shot, err)
	}
}

// artifactPath returns where to save a test artifact: $CALLROUTER_ARTIFACTS, or out/artifacts at
// the module root.
func artifactPath(t *testing.T, name string) string {
	dir := os.Getenv("CALLROUTER_ARTIFACTS")
	if dir == "" {
		wd, _ := os.Getwd()
		for d := wd; d != filepath.Dir(d); d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
				dir = filepath.Join(d, "out", "artifacts")
				break
			}
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p, _ := filepath.Abs(filepath.Join(dir, name))
	return p
}
