package k8s

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/cli"
	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/peertest"
	"github.com/callrouter/callrouter/internal/player"
	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/wav"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
)

// TestPrometheusScrapesAStackAndRunsEveryQuery runs the real Prometheus (Debian's prometheus
// package) against a real one-process stack carrying a call, loaded with the alert rules: every
// metric the panels and rules use that the stack exposes is scraped under that name, every panel's
// query runs, the rules load healthy, and on a healthy stack no alert fires.
func TestPrometheusScrapesAStackAndRunsEveryQuery(t *testing.T) {
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		peertest.Missing(t, "prometheus not installed (apt-get install prometheus)")
	}
	wc := worker.DefaultConfig()
	wc.Processors = []string{"accounting"}
	s, err := stack.Start(stack.Config{Workers: 2, Worker: wc, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// One NATS connection's client metrics, as every binary registers them (cli.RegisterMetrics).
	bc := bus.DefaultConfig()
	bc.URL = s.URL
	nc, err := bus.Connect(bc, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := cli.RegisterMetrics(s.Registry(), nc, bc); err != nil {
		t.Fatal(err)
	}
	target := httptest.NewServer(promhttp.HandlerFor(s.Registry(), promhttp.HandlerOpts{}))
	defer target.Close()

	// A call in progress for the whole test, so per-call series exist.
	ch := make([][]byte, 2)
	for c := range ch {
		ch[c] = make([]byte, 50*160*2)
	}
	rec, err := filesrc.FromAudio(&wav.Audio{Format: wav.FormatPCM, Rate: 8000, BitsPerSample: 16, Channels: ch}, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	played := make(chan struct{})
	go func() {
		defer close(played)
		_, _ = player.Play(ctx, s.Ingest, rec, rec.Spec("acme", "c-1", nil), 3000, 1)
	}()
	defer func() { cancel(); <-played }()

	dir := t.TempDir()
	rules, err := filepath.Abs(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	promAddr := fmt.Sprintf("127.0.0.1:%d", peertest.Port(t))
	cfg := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [%q]
scrape_configs:
  - job_name: callrouter
    static_configs:
      - targets: [%q]
        labels: {component: router, pod: stack-0}
`, rules, strings.TrimPrefix(target.URL, "http://"))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithCancel(context.Background())
	prom := exec.CommandContext(pctx, promBin, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr, "--log.level=warn")
	var plog strings.Builder
	prom.Stdout, prom.Stderr = &plog, &plog
	if err := prom.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		pcancel()
		_ = prom.Wait()
		if t.Failed() {
			t.Logf("prometheus:\n%s", plog.String())
		}
	}()

	api := func(path string, q url.Values, v any) error {
		resp, err := http.Get("http://" + promAddr + path + "?" + q.Encode())
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var r struct {
			Status string          `json:"status"`
			Error  string          `json:"error"`
			Data   json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(body, &r); err != nil {
			return fmt.Errorf("%s: %v: %s", path, err, body)
		}
		if r.Status != "success" {
			return fmt.Errorf("%s %v: %s", path, q, r.Error)
		}
		return json.Unmarshal(r.Data, v)
	}
	type sample struct {
		Metric map[string]string `json:"metric"`
	}
	var vec struct {
		Result []sample `json:"result"`
	}
	instant := func(expr string) ([]sample, error) {
		err := api("/api/v1/query", url.Values{"query": {expr}}, &vec)
		return vec.Result, err
	}
	// Scraped names, once the call's progress and placement are in.
	names := map[string]bool{}
	deadline := time.Now().Add(60 * time.Second)
	for !names["callrouter_worker_frame_delay_seconds_bucket"] || !names["callrouter_router_tenant_calls"] || !names["callrouter_router_placements_total"] {
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus did not scrape the stack in time; names so far %v", names)
		}
		time.Sleep(250 * time.Millisecond)
		res, err := instant(`count by (__name__) ({__name__=~"callrouter_.+"})`)
		if err != nil {
			continue // not ready yet
		}
		for _, r := range res {
			names[r.Metric["__name__"]] = true
		}
	}

	// Every metric the panels and rules use that the stack exposes, Prometheus has under that name.
	exposed := map[string]bool{}
	mfs, err := s.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		n := mf.GetName()
		exposed[n] = true
		if mf.GetType().String() == "HISTOGRAM" {
			exposed[n+"_bucket"], exposed[n+"_sum"], exposed[n+"_count"] = true, true, true
		}
	}
	var queries []string
	for _, p := range allPanels(loadDashboard(t).Panels) {
		for _, tg := range p.Targets {
			queries = append(queries, strings.NewReplacer("$__rate_interval", "1m", "$tenant", ".*").Replace(tg.Expr))
		}
	}
	for _, r := range alerts(t) {
		queries = append(queries, r.Expr)
	}
	used := 0
	for _, q := range queries {
		for _, m := range metricRef.FindAllStringSubmatch(q, -1) {
			if exposed[m[1]] {
				used++
				if !names[m[1]] {
					t.Errorf("%s is exposed by the stack and used by %q, but Prometheus did not scrape it", m[1], q)
				}
			}
		}
	}
	if used < 20 {
		t.Errorf("only %d uses of exposed metrics: the stack exposes too little of what the dashboard reads", used)
	}
	// Every panel query runs.
	for _, q := range queries {
		if _, err := instant(q); err != nil {
			t.Errorf("query fails in Prometheus: %v", err)
		}
	}
	// eventually polls a query until it returns want series.
	eventually := func(what, expr string, want int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			res, err := instant(expr)
			if err == nil && len(res) == want {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("%s: %s gives %v (%v), want %d series", what, expr, res, err, want)
				return
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	// The frames flow shows in the dashboard's frames-per-second query.
	eventually("frames per second of the running call", `sum(rate(callrouter_worker_frames_total{result="processed"}[1m])) > 0`, 1)
	// The rules load healthy and nothing fires or is pending on a healthy stack.
	var rg struct {
		Groups []struct {
			Rules []struct {
				Name      string `json:"name"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
			} `json:"rules"`
		} `json:"groups"`
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		err := api("/api/v1/rules", url.Values{}, &rg)
		ok, n := err == nil, 0
		for _, g := range rg.Groups {
			for _, r := range g.Rules {
				n++
				ok = ok && r.Health == "ok"
			}
		}
		if ok && n == len(alerts(t)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rules not loaded and evaluated healthy: %+v (%v)", rg, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	// (CallrouterNoRouter is pending at the first evaluation, before the first scrape, and
	// resolves with it.)
	eventually("alerts on a healthy stack", `ALERTS`, 0)
}
