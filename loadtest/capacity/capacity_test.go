package capacity

import (
	"fmt"
	"math"
	"path/filepath"
	"testing"
)

// The in-process runs the model is fitted from and the one it must predict; see docs/scaling.md
// for the command, date and machine of each.
var (
	fitCalls     = []int{250, 500, 1000}
	predictCalls = 2500
)

// maxDeviation is how far the prediction may miss the measured 2,500-call run (issue 17 goal 6).
const maxDeviation = 0.20

func report(t *testing.T, calls int) *Report {
	t.Helper()
	r, err := ReadReport(filepath.Join("testdata", fmt.Sprintf("inproc-%d.json", calls)))
	if err != nil {
		t.Fatal(err)
	}
	if r.Config.Calls != calls {
		t.Fatalf("inproc-%d.json holds a %d-call run", calls, r.Config.Calls)
	}
	return r
}

func TestFitRecoversALine(t *testing.T) {
	l, err := Fit([]float64{100, 200, 400}, []float64{12, 22, 42})
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(l.Fixed-2) > 1e-9 || math.Abs(l.PerCall-0.1) > 1e-9 {
		t.Fatalf("fit %+v, want fixed 2, per call 0.1", l)
	}
	if _, err := Fit([]float64{5, 5}, []float64{1, 2}); err == nil {
		t.Fatal("a fit through one call count succeeded")
	}
}

func TestHopFactor(t *testing.T) {
	for _, c := range []struct {
		k     int
		local bool
		want  float64
	}{{1, false, 1}, {2, false, 1.5}, {3, false, 5.0 / 3}, {9, true, 1}} {
		if got := HopFactor(c.k, c.local); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("HopFactor(%d, %v) = %v, want %v", c.k, c.local, got, c.want)
		}
	}
}

// TestPredict fits the one-process model from the smaller in-process runs and predicts the
// 2,500-call run's CPU and memory, which it compares with the measured report.
func TestPredict(t *testing.T) {
	var fit []*Report
	for _, n := range fitCalls {
		fit = append(fit, report(t, n))
	}
	m, err := FitSingle(fit)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fitted from %v calls: CPU %.3f cores + %.3f ms per call-second; RSS %.0f MB + %.1f KB per call",
		m.Calls, m.CPU.Fixed, m.CPU.PerCall*1000, m.RSS.Fixed, m.RSS.PerCall*1024)
	for _, r := range fit {
		c, mb, sent, _ := r.Usage()
		n := float64(r.Config.Calls)
		ph := r.Phases[len(r.Phases)-1]
		t.Logf("  %5d calls (%s): %.0f %% of frames sent, CPU %.3f cores (fit %.3f), RSS %.0f MB (fit %.0f), p99 %.1f ms, setup p99 %.0f ms, %.2f cores of other work",
			r.Config.Calls, r.Started, sent*100, c, m.CPU.At(n*sent), mb, m.RSS.At(n), ph.Latency.P99, ph.Setup.P99, ph.Machine.BackgroundCores)
	}
	got := report(t, predictCalls)
	cpu, rss, sent, err := got.Usage()
	if err != nil {
		t.Fatal(err)
	}
	// On a starved machine the tester sends fewer frames than it offers; CPU goes per frame, so the
	// prediction is at the frames actually sent, memory at the calls held.
	t.Logf("%d-call run (%s): %.0f %% of the offered frames sent, %.2f cores of other work",
		predictCalls, got.Started, sent*100, got.Phases[len(got.Phases)-1].Machine.BackgroundCores)
	n := float64(predictCalls)
	for _, c := range []struct {
		what                string
		predicted, measured float64
		unit                string
	}{{"CPU", m.CPU.At(n * sent), cpu, "cores"}, {"RSS", m.RSS.At(n), rss, "MB"}} {
		d := Deviation(c.predicted, c.measured)
		t.Logf("%d calls %s: predicted %.2f %s, measured %.2f %s: %+.1f %%", predictCalls, c.what, c.predicted, c.unit, c.measured, c.unit, d*100)
		if math.Abs(d) > maxDeviation {
			t.Errorf("%d calls %s: the model predicts %.2f %s, the run measured %.2f: off by %+.1f %%, more than %.0f %%",
				predictCalls, c.what, c.predicted, c.unit, c.measured, d*100, maxDeviation*100)
		}
	}
	// Issue 17's goal-1 figures at full rate, from an earlier run on older code (docs/loadtest.md,
	// 2026-11-22: 1.50 cores with 83 % of frames sent; 637 MB RSS): logged for comparison only.
	t.Logf("vs issue 17's 2,500-call figures (older code): CPU %.2f cores predicted at 83 %% sent vs 1.50 (%+.0f %%), RSS %.0f vs 637 MB (%+.0f %%)",
		m.CPU.At(n*0.83), Deviation(m.CPU.At(n*0.83), 1.50)*100, m.RSS.At(n), Deviation(m.RSS.At(n), 637)*100)
	// p99 is not linear in calls (flat, then unbounded as a core saturates): reported, not modelled.
	t.Logf("%d calls p99 %.1f ms: not predicted (latency is not linear in load)", predictCalls, got.Phases[len(got.Phases)-1].Latency.P99)
}

// The region the plan sizes: issue 17's 100,000 calls on 16-core, 64 GiB nodes at 60 %.
var (
	region = Demand{Calls: 100_000, MeanCallSeconds: 300, PeakStartFactor: 3, FrameBytes: 250}
	node   = Node{Cores: 16, MemGiB: 64, Target: 0.6}
)

func scaleCosts(t *testing.T) (Costs, []ScaleRun) {
	t.Helper()
	rs, err := ReadScale(filepath.Join("testdata", "scale.json"))
	if err != nil {
		t.Fatal(err)
	}
	steady, err := FindScale(rs, "cluster", "steady-400")
	if err != nil {
		t.Fatal(err)
	}
	c, err := CostsFrom(steady)
	if err != nil {
		t.Fatal(err)
	}
	return c, rs
}

// TestPlan sizes a region for 100,000 concurrent two-leg calls from the scale-out run's cluster
// costs, with random placement and with interest locality.
func TestPlan(t *testing.T) {
	c, rs := scaleCosts(t)
	t.Logf("cluster costs per concurrent call: CPU ms/s ingest %.3f, worker %.3f, nats %.3f, router %.3f; RSS KB ingest %.0f, worker %.0f, nats %.0f; %.0f NATS msgs/s; %.1f subscriptions",
		c.IngestCPU*1000, c.WorkerCPU*1000, c.NATSCPU*1000, c.RouterCPU*1000, c.IngestMB*1024, c.WorkerMB*1024, c.NATSMB*1024, c.MsgsPerCallSecond, c.SubsPerCall)
	if single, err := FindScale(rs, "single", "steady-400"); err == nil {
		pred := single.Cores["nats"] / float64(single.Calls) * HopFactor(c.MeasuredNATSNodes, false)
		t.Logf("route hops: single-node NATS CPU %.3f ms/call-s × hop factor %.2f predicts %.3f on %d nodes, measured %.3f (%+.0f %%)",
			single.Cores["nats"]/float64(single.Calls)*1000, HopFactor(c.MeasuredNATSNodes, false), pred*1000, c.MeasuredNATSNodes, c.NATSCPU*1000, Deviation(pred, c.NATSCPU)*100)
		cluster, _ := FindScale(rs, "cluster", "steady-400")
		t.Logf("cluster/single CPU per call: %.2fx", cluster.PerCall()/single.PerCall())
	}
	mesh := Size(c, region, node, false)
	local := Size(c, region, node, true)
	t.Logf("\n%s\n%s", mesh, local)
	for _, p := range []Plan{mesh, local} {
		// Each class's nodes carry the demand at or under the target utilisation.
		if got := float64(region.Calls) * c.IngestCPU / float64(p.Ingest); got > node.Cores*node.Target {
			t.Errorf("%d ingest nodes run at %.1f cores each, over %.1f", p.Ingest, got, node.Cores*node.Target)
		}
		if got := float64(region.Calls) * c.WorkerCPU / float64(p.Worker); got > node.Cores*node.Target {
			t.Errorf("%d worker nodes run at %.1f cores each, over %.1f", p.Worker, got, node.Cores*node.Target)
		}
		if p.NATSCoresPerNode > node.Cores*node.Target {
			t.Errorf("%d NATS nodes run at %.1f cores each, over %.1f", p.NATS, p.NATSCoresPerNode, node.Cores*node.Target)
		}
	}
	if local.NATS > mesh.NATS || local.RouteMsgsPerSecond != 0 {
		t.Errorf("interest locality needs %d NATS nodes and %.0f route msgs/s, the full mesh %d", local.NATS, local.RouteMsgsPerSecond, mesh.NATS)
	}
}
