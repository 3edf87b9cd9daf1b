// Package capacity is callrouter's capacity model: what a concurrent two-leg call costs in CPU,
// memory, NATS messages and subscriptions, fitted from load-test reports (cmd/loadtest -json and
// the scale-out run, make scale), and a plan that sizes a region (ingest, worker and NATS nodes)
// from those costs. It reads measurements; it does not measure. docs/scaling.md explains the
// numbers it prints.
//
// The model is linear in concurrent calls: cost(n) = fixed + n·perCall, fitted by least squares.
// Latency percentiles are not: a p99 stays flat until a core saturates and then grows without
// bound, so the model predicts CPU and memory and says where utilisation stops being safe, never
// a p99.
package capacity

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"strings"
)

// Report is the part of a load tester JSON report (loadtest.Report) the model reads. Reports in
// testdata are trimmed to these fields.
type Report struct {
	Started string `json:"started"` // when the run began, for the record
	Config  struct {
		Mode    string  `json:"mode"`
		Calls   int     `json:"calls"`
		Legs    int     `json:"legs_per_call"`
		Offered float64 `json:"offered_frames_per_s"`
	} `json:"config"`
	Phases []Phase `json:"phases"`
}

// Phase is one phase of a report: the callrouter phase (name "callrouter") or the baseline.
type Phase struct {
	Name      string  `json:"name"`
	FramesPS  float64 `json:"frames_per_s"` // frames the tester sent per second
	Processes []struct {
		Name     string  `json:"name"`
		CPUCores float64 `json:"cpu_cores"`
		MaxRSSMB float64 `json:"max_rss_mb"`
	} `json:"processes"`
	Latency struct {
		P99 float64 `json:"p99_ms"`
	} `json:"latency"`
	Setup struct {
		P99 float64 `json:"p99_ms"`
	} `json:"setup"`
	Machine struct {
		BusyCores       float64 `json:"busy_cores"`
		BackgroundCores float64 `json:"background_cores"`
		LoadAvg         string  `json:"loadavg_end"`
	} `json:"machine"`
}

// ReadReport reads a load tester JSON report.
func ReadReport(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("capacity: %s: %w", path, err)
	}
	if r.Config.Calls <= 0 {
		return nil, fmt.Errorf("capacity: %s: no calls in the report's config", path)
	}
	return &r, nil
}

// Usage is what the one in-process stack (tester, nats-server, router, workers, ingest) used in
// the report's callrouter phase (the first watched process, which is the tester's own), and the
// share of the offered frames the tester managed to send: on a starved machine the tester falls
// behind, and a run that sent 60 % of its frames cost 60 % of a full one.
func (r *Report) Usage() (cores, rssMB, sent float64, err error) {
	for _, ph := range r.Phases {
		if !strings.HasPrefix(ph.Name, "callrouter") {
			continue
		}
		if len(ph.Processes) == 0 {
			return 0, 0, 0, fmt.Errorf("capacity: phase %q has no process usage", ph.Name)
		}
		sent = 1.0
		if r.Config.Offered > 0 && ph.FramesPS > 0 {
			sent = min(ph.FramesPS/r.Config.Offered, 1)
		}
		return ph.Processes[0].CPUCores, ph.Processes[0].MaxRSSMB, sent, nil
	}
	return 0, 0, 0, fmt.Errorf("capacity: no callrouter phase in a %d-call report", r.Config.Calls)
}

// Line is cost(n) = Fixed + PerCall·n.
type Line struct{ Fixed, PerCall float64 }

// At is the line's value at n calls.
func (l Line) At(n float64) float64 { return l.Fixed + l.PerCall*n }

// Fit is the least-squares line through (x, y); it needs two distinct x.
func Fit(x, y []float64) (Line, error) {
	if len(x) != len(y) || len(x) < 2 {
		return Line{}, fmt.Errorf("capacity: fit needs at least two points, have %d", len(x))
	}
	var sx, sy, sxx, sxy float64
	for i := range x {
		sx, sy, sxx, sxy = sx+x[i], sy+y[i], sxx+x[i]*x[i], sxy+x[i]*y[i]
	}
	n := float64(len(x))
	den := n*sxx - sx*sx
	if den == 0 {
		return Line{}, fmt.Errorf("capacity: fit needs two distinct call counts")
	}
	slope := (n*sxy - sx*sy) / den
	return Line{Fixed: (sy - slope*sx) / n, PerCall: slope}, nil
}

// Single is the one-process model: CPU (cores) against calls at full frame rate (calls × the
// share of frames sent: CPU goes per frame) and RSS (MB) against concurrent calls.
type Single struct {
	CPU, RSS Line
	Calls    []int // the call counts it was fitted from
}

// FitSingle fits the one-process model from in-process reports at different call counts.
func FitSingle(reports []*Report) (Single, error) {
	var n, full, cpu, rss []float64
	var s Single
	for _, r := range reports {
		c, m, sent, err := r.Usage()
		if err != nil {
			return Single{}, err
		}
		n, full = append(n, float64(r.Config.Calls)), append(full, float64(r.Config.Calls)*sent)
		cpu, rss = append(cpu, c), append(rss, m)
		s.Calls = append(s.Calls, r.Config.Calls)
	}
	var err error
	if s.CPU, err = Fit(full, cpu); err != nil {
		return Single{}, err
	}
	if s.RSS, err = Fit(n, rss); err != nil {
		return Single{}, err
	}
	return s, nil
}

// Deviation is (predicted-measured)/measured.
func Deviation(predicted, measured float64) float64 { return (predicted - measured) / measured }

// Costs are the per-call costs of each process class in a cluster, from the scale-out run.
type Costs struct {
	// Per concurrent two-leg call, CPU in cores (CPU seconds per call-second), by class.
	IngestCPU, WorkerCPU, NATSCPU, RouterCPU float64
	// Resident memory per concurrent call in MB, by class: the class's RSS at the measured load
	// divided by its calls, an upper bound that folds the fixed cost in.
	IngestMB, WorkerMB, NATSMB float64
	// NATS messages clients publish per call-second (media frames, setup, heartbeats' share).
	MsgsPerCallSecond float64
	// NATS subscriptions per concurrent call (cluster-wide interest a call adds).
	SubsPerCall float64
	// The NATS cluster size these were measured on: NATSCPU includes its route hops.
	MeasuredNATSNodes int
}

// HopFactor is how much NATS work a client-published message costs on a k-node full-mesh
// cluster, relative to one node, when publisher and subscriber sit on random nodes: the message
// crosses a route with probability (k-1)/k, and a crossing costs a second node the same
// receive-and-deliver work. With interest locality (a call's ingest and worker on one node) the
// factor is 1 whatever k.
func HopFactor(k int, local bool) float64 {
	if k <= 1 || local {
		return 1
	}
	return 1 + float64(k-1)/float64(k)
}

// NATSCPUPerCall is the NATS CPU per call on a k-node cluster, scaled from the measured cluster
// size by the hop factor.
func (c Costs) NATSCPUPerCall(k int, local bool) float64 {
	return c.NATSCPU / HopFactor(c.MeasuredNATSNodes, false) * HopFactor(k, local)
}

// Node is a machine size and the utilisation the plan sizes to.
type Node struct {
	Cores  float64
	MemGiB float64
	Target float64 // fraction of cores and memory in use at the planned load, e.g. 0.6
}

// Demand is the load a region must carry.
type Demand struct {
	Calls           int     // concurrent two-leg calls
	MeanCallSeconds float64 // mean call length: sets the call start rate (Little's law)
	PeakStartFactor float64 // peak start rate over the mean (shift changes, campaigns)
	FrameBytes      float64 // bytes on the wire per media frame message (payload, subject, headers)
}

// Plan is how many nodes of each class a region needs, and what the NATS mesh carries.
type Plan struct {
	Demand                        Demand
	Node                          Node
	Ingest, Worker, NATS, Routers int
	IngestBy, WorkerBy, NATSBy    string // "cpu" or "memory": what sized the class
	Local                         bool   // interest locality assumed
	NATSCoresPerNode              float64
	MsgsPerSecond                 float64 // client messages per second, region-wide
	RouteMsgsPerSecond            float64 // of those, crossing a route (0 with locality)
	RouteGbitPerNode              float64 // route traffic out of each NATS node
	Subscriptions                 float64 // cluster-wide call subscriptions (each node holds all)
	StartsPerSecond, PeakStarts   float64
	InterestPerSecond             float64 // subscription changes every node applies at peak
	Router                        float64 // router cores in all (heartbeats grow with calls)
}

// Size plans a region: per class, nodes = max(calls·cpu/(cores·target), calls·mem/(mem·target)),
// at least two of each for failure (one node lost leaves the rest at most at 100 %). NATS nodes
// are solved for k with the route hop factor of k (full mesh, or local interest).
func Size(c Costs, d Demand, node Node, local bool) Plan {
	p := Plan{Demand: d, Node: node, Local: local}
	calls := float64(d.Calls)
	cores, memMB := node.Cores*node.Target, node.MemGiB*1024*node.Target
	nodes := func(cpu, mb float64) (int, string) {
		byCPU, byMem := math.Ceil(calls*cpu/cores), math.Ceil(calls*mb/memMB)
		n, by := byCPU, "cpu"
		if byMem > byCPU {
			n, by = byMem, "memory"
		}
		return max(int(n), 2), by
	}
	p.Ingest, p.IngestBy = nodes(c.IngestCPU, c.IngestMB)
	p.Worker, p.WorkerBy = nodes(c.WorkerCPU, c.WorkerMB)
	// NATS: the smallest k of at least 3 whose per-node CPU and memory fit (the hop factor grows
	// with k, so more nodes give diminishing relief without locality).
	for k := 3; ; k++ {
		per := calls * c.NATSCPUPerCall(k, local) / float64(k)
		mem := calls * c.NATSMB / float64(k)
		if (per <= cores && mem <= memMB) || k > 999 {
			p.NATS, p.NATSCoresPerNode, p.NATSBy = k, per, "cpu"
			if mem/memMB > per/cores {
				p.NATSBy = "memory"
			}
			break
		}
	}
	p.MsgsPerSecond = calls * c.MsgsPerCallSecond
	if !local {
		k := float64(p.NATS)
		p.RouteMsgsPerSecond = p.MsgsPerSecond * (k - 1) / k
		p.RouteGbitPerNode = p.RouteMsgsPerSecond / k * d.FrameBytes * 8 / 1e9
	}
	p.Subscriptions = calls * c.SubsPerCall
	p.StartsPerSecond = calls / d.MeanCallSeconds
	p.PeakStarts = p.StartsPerSecond * d.PeakStartFactor
	// Each start adds and each end removes the call's subscriptions; in a full mesh every node
	// applies every change, with locality too (interest is still propagated, just not used).
	p.InterestPerSecond = 2 * p.PeakStarts * c.SubsPerCall
	p.Router = calls * c.RouterCPU
	p.Routers, _ = nodes(c.RouterCPU, 0)
	return p
}

// String is the plan as the table docs/scaling.md shows.
func (p Plan) String() string {
	var b strings.Builder
	mode := "random placement (full-mesh routes)"
	if p.Local {
		mode = "interest locality (a call's ingest and worker on one NATS node)"
	}
	fmt.Fprintf(&b, "%d concurrent two-leg calls, nodes of %.0f cores / %.0f GiB at %.0f %% target, %s:\n",
		p.Demand.Calls, p.Node.Cores, p.Node.MemGiB, p.Node.Target*100, mode)
	fmt.Fprintf(&b, "  ingest nodes  %4d (sized by %s)\n", p.Ingest, p.IngestBy)
	fmt.Fprintf(&b, "  worker nodes  %4d (sized by %s)\n", p.Worker, p.WorkerBy)
	fmt.Fprintf(&b, "  NATS nodes    %4d (sized by %s; %.1f cores each)\n", p.NATS, p.NATSBy, p.NATSCoresPerNode)
	fmt.Fprintf(&b, "  routers       %4d (%.1f cores of placement and heartbeats in all)\n", p.Routers, p.Router)
	fmt.Fprintf(&b, "  NATS messages %.2fM/s from clients, %.2fM/s across routes, %.2f Gbit/s route out per node\n",
		p.MsgsPerSecond/1e6, p.RouteMsgsPerSecond/1e6, p.RouteGbitPerNode)
	fmt.Fprintf(&b, "  subscriptions %.0f on every node; starts %.0f/s mean, %.0f/s peak: %.0f interest changes/s on every node\n",
		p.Subscriptions, p.StartsPerSecond, p.PeakStarts, p.InterestPerSecond)
	return b.String()
}

// ScaleRun is one load of the scale-out run (e2e/scale_test.go, make scale), as it writes them to
// CALLROUTER_SCALE_JSON.
type ScaleRun struct {
	Topology      string             `json:"topology"`
	NATSNodes     int                `json:"nats"`
	Routers       int                `json:"routers"`
	Ingests       int                `json:"ingests"`
	Workers       int                `json:"workers"`
	Name          string             `json:"name"`
	Calls         int                `json:"calls"`
	Cores         map[string]float64 `json:"cores"`  // by class: ingest, nats, router, worker
	RSSMB         map[string]float64 `json:"rss_mb"` // by class, summed over the class's processes
	Subs          int                `json:"subs"`   // summed over NATS nodes
	NATSInPerSec  float64            `json:"nats_in_msgs_per_s"`
	NATSOutPerSec float64            `json:"nats_out_msgs_per_s"`
	P99           float64            `json:"p99_ms"`
	SetupP99      float64            `json:"setup_p99_ms"`
}

// ReadScale reads the runs of a scale-out JSON file.
func ReadScale(path string) ([]ScaleRun, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rs []ScaleRun
	if err := json.Unmarshal(b, &rs); err != nil {
		return nil, fmt.Errorf("capacity: %s: %w", path, err)
	}
	return rs, nil
}

// FindScale is the run of a topology with the given name, e.g. ("cluster", "steady-400").
func FindScale(rs []ScaleRun, topology, name string) (ScaleRun, error) {
	for _, r := range rs {
		if r.Topology == topology && r.Name == name {
			return r, nil
		}
	}
	return ScaleRun{}, fmt.Errorf("capacity: no %s run %q", topology, name)
}

// PerCall is the CPU (cores) per concurrent call over every class.
func (r ScaleRun) PerCall() float64 {
	var sum float64
	for _, c := range r.Cores {
		sum += c
	}
	return sum / float64(r.Calls)
}

// CostsFrom derives the cluster costs from a steady run. Memory and subscriptions per call are
// the run's totals over its calls: upper bounds that fold each process's fixed cost in (the varz
// subscription count on each node includes the interest routes brought it, so the sum is divided
// by the node count).
func CostsFrom(steady ScaleRun) (Costs, error) {
	if steady.Calls <= 0 {
		return Costs{}, fmt.Errorf("capacity: a scale run of %s with no calls", steady.Topology)
	}
	n := float64(steady.Calls)
	k := max(steady.NATSNodes, 1)
	return Costs{
		IngestCPU:         steady.Cores["ingest"] / n,
		WorkerCPU:         steady.Cores["worker"] / n,
		NATSCPU:           steady.Cores["nats"] / n,
		RouterCPU:         steady.Cores["router"] / n,
		IngestMB:          steady.RSSMB["ingest"] / n,
		WorkerMB:          steady.RSSMB["worker"] / n,
		NATSMB:            steady.RSSMB["nats"] / n,
		MsgsPerCallSecond: steady.NATSInPerSec / n / HopFactor(k, false),
		SubsPerCall:       float64(steady.Subs) / n / float64(k),
		MeasuredNATSNodes: k,
	}, nil
}
