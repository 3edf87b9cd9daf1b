package e2e

// The scale-out measurement (issue 17 goal 5): the same load on one of each process and on a
// cluster (3 NATS nodes joined by routes, 2 routers, 2 SIP ingests, 4 workers), driven by the
// black-box load tester (cmd/loadtest -mode sip, one per ingest) with every frame accounted at the
// workers. It reports CPU per call by process class, memory, NATS subscriptions, and the call
// start rate each topology sustains. It runs only with CALLROUTER_SCALE=1 (make scale): it takes
// minutes and both cores. NATS here is plain (no TLS, no nkeys) so that the load tester, which has
// no credential flags, can reach it; `make loadtest -secure` measures what TLS costs.

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

// topology is one deployment shape of the scale run.
type topology struct {
	name                            string
	nats, routers, ingests, workers int
}

var (
	singleTopo  = topology{"single", 1, 1, 1, 2}
	clusterTopo = topology{"cluster", 3, 2, 2, 4}
)

// scaleEnv reads a positive integer setting of the scale run.
func scaleEnv(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

func TestScaleOut(t *testing.T) {
	if os.Getenv("CALLROUTER_SCALE") == "" {
		t.Skip("the scale-out measurement runs with CALLROUTER_SCALE=1 (make scale)")
	}
	buildScaleBinaries(t)
	calls := scaleEnv(t, "CALLROUTER_SCALE_CALLS", 400)
	steady := time.Duration(scaleEnv(t, "CALLROUTER_SCALE_SECONDS", 30)) * time.Second
	var rates []int
	for _, f := range strings.Split(cmp.Or(os.Getenv("CALLROUTER_SCALE_RATES"), "50,100,200"), ",") {
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			t.Fatalf("CALLROUTER_SCALE_RATES=%q: want comma-separated positive call start rates", os.Getenv("CALLROUTER_SCALE_RATES"))
		}
		rates = append(rates, n)
	}

	passes := scaleEnv(t, "CALLROUTER_SCALE_PASSES", 2)
	var results []*scaleRun
	var again []*scaleRun // the steady loads of passes 2 and on
	var churn []*scaleRun
	var churnRates []int // the start rate of each churn run
	for _, topo := range []topology{singleTopo, clusterTopo} {
		t.Run(topo.name, func(t *testing.T) {
			d := startDeployment(t, topo)
			r := d.load(t, fmt.Sprintf("steady-%d", calls), calls, 60*time.Second, steady, 100)
			results = append(results, r)
			for _, rate := range rates {
				// Calls of 2 s kept up at rate×2 concurrent: rate calls start (and end) every second.
				churn = append(churn, d.load(t, fmt.Sprintf("churn-%d/s", rate), 2*rate, 2*time.Second, 20*time.Second, float64(4*rate)))
				churnRates = append(churnRates, rate)
			}
		})
	}
	// The steady loads again, alternating as before, on fresh deployments: one run's CPU per
	// call swings by a quarter between runs on this shared machine (docs/scaling.md), so the
	// cluster/single figure is the ratio of each topology's mean over the passes.
	for pass := 2; pass <= passes && !t.Failed(); pass++ {
		for _, topo := range []topology{singleTopo, clusterTopo} {
			t.Run(fmt.Sprintf("%s/pass-%d", topo.name, pass), func(t *testing.T) {
				d := startDeployment(t, topo)
				again = append(again, d.load(t, fmt.Sprintf("steady-%d (pass %d)", calls, pass), calls, 60*time.Second, steady, 100))
			})
		}
	}
	if t.Failed() {
		return
	}
	if path := os.Getenv("CALLROUTER_SCALE_JSON"); path != "" {
		writeScaleJSON(t, path, append(append(append([]*scaleRun{}, results...), churn...), again...))
	}
	for i, r := range churn {
		r.rate = churnRates[i]
	}
	for _, topo := range []topology{singleTopo, clusterTopo} {
		best := 0
		for _, r := range churn {
			if r.topo == topo && r.setupP99 <= churnSetupBound && r.lost == 0 && r.refused == 0 && r.failed == 0 {
				best = max(best, r.rate)
			}
		}
		t.Logf("FIGURES churn: %s sustains %d call starts/s with setup p99 <= %.0f ms (tried %v)", topo.name, best, churnSetupBound, rates)
	}
	steadies := append(append([]*scaleRun{}, results...), again...)
	t.Logf("\n%s", scaleTable(steadies))
	t.Logf("\n%s", churnTable(churn))
	if single, cluster := meanPerCall(steadies, singleTopo), meanPerCall(steadies, clusterTopo); single > 0 && cluster > 0 {
		var pairs []string
		for i := 0; i+1 < len(steadies); i += 2 {
			if a, b := steadies[i], steadies[i+1]; a.topo == singleTopo && b.topo == clusterTopo && a.perCall() > 0 {
				pairs = append(pairs, fmt.Sprintf("%.2fx", b.perCall()/a.perCall()))
			}
		}
		t.Logf("FIGURES scale: cluster/single CPU per call %.2fx of the means over %d passes (%.3f vs %.3f ms of CPU per call-second; pass by pass %s)",
			cluster/single, passes, cluster*1000, single*1000, strings.Join(pairs, ", "))
	}
	for _, r := range append(steadies, churn...) {
		if r.lost != 0 || r.refused != 0 || r.failed != 0 {
			t.Errorf("%s %s: %d frames lost or unaccounted, %d calls refused, %d failed", r.topo.name, r.name, r.lost, r.refused, r.failed)
		}
	}
}

// meanPerCall is the mean CPU per call (cores) of a topology's steady runs.
func meanPerCall(rs []*scaleRun, topo topology) float64 {
	var sum float64
	n := 0
	for _, r := range rs {
		if r.topo == topo {
			sum += r.perCall()
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}

// buildScaleBinaries adds the load tester and a worker that links its probe (latency) to binDir.
func buildScaleBinaries(t *testing.T) {
	t.Helper()
	for _, b := range [][]string{
		{"build", "-o", filepath.Join(binDir, "loadtest"), "../cmd/loadtest"},
		{"build", "-tags", "loadtest", "-o", filepath.Join(binDir, "probe-worker"), "../cmd/worker"},
	} {
		cmd := exec.Command("go", b...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("go %s: %v", strings.Join(b, " "), err)
		}
	}
}

// deployment is one running topology.
type deployment struct {
	topo    topology
	nats    []*natsNode
	nc      *nats.Conn
	sip     []string // the ingests' SIP addresses
	procs   map[string][]*process
	natsURL string
}

func startDeployment(t *testing.T, topo topology) *deployment {
	t.Helper()
	d := &deployment{topo: topo, nats: scaleNATS(t, topo.nats), procs: map[string][]*process{}}
	for _, nd := range d.nats {
		nd.startPlain(t, d.nats)
		d.procs["nats"] = append(d.procs["nats"], nd.process)
	}
	d.natsURL = urls(d.nats)
	nc, err := nats.Connect(d.natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	d.nc = nc
	common := func(id string) []string {
		return []string{"-id", id, "-nats", d.natsURL, "-http", "127.0.0.1:0", "-log-level", "warn"}
	}
	for i := 0; i < topo.routers; i++ {
		id := fmt.Sprintf("router-%d", i)
		d.procs["router"] = append(d.procs["router"], start(t, id, "router", common(id)...))
	}
	for i := 0; i < topo.workers; i++ {
		id := fmt.Sprintf("worker-%d", i)
		d.procs["worker"] = append(d.procs["worker"], start(t, id, "probe-worker",
			append(common(id), "-processors", "accounting,loadtest", "-capacity", "2000")...))
	}
	for i := 0; i < topo.ingests; i++ {
		id := fmt.Sprintf("ingest-%d", i)
		// SIP and RTP ports below the ephemeral range (32768 and up): every process here binds
		// HTTP and WHIP on :0, and a SIP port taken from that range can be handed to one of them
		// between the probe and the ingest's bind (a run saw a router's HTTP take it: the ingest's
		// SIP stopped and the tester waited for ever).
		addr := fmt.Sprintf("127.0.0.1:%d", lowFreePort(t, 10000+i*1000, 1000))
		d.sip = append(d.sip, addr)
		lo := 12000 + i*10000
		p := start(t, id, "ingest", append(common(id),
			"-whip-listen", "127.0.0.1:0", "-whip-udp", "127.0.0.1:0",
			"-sip-listen", addr, "-sip-tenant-rule", "ruri-user", "-sip-invite-rate", "0",
			"-sip-rtp-port-min", fmt.Sprint(lo), "-sip-rtp-port-max", fmt.Sprint(lo+9999))...)
		d.procs["ingest"] = append(d.procs["ingest"], p)
		eventually(t, 30*time.Second, id+" to listen for SIP on "+addr, func() bool {
			if b, _ := os.ReadFile(p.log); strings.Contains(string(b), "SIP user agent stopped") {
				t.Fatalf("%s: SIP stopped:\n%s", id, b)
			}
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				return false
			}
			c.Close()
			return true
		})
	}
	eventually(t, 60*time.Second, fmt.Sprintf("%d ready workers", topo.workers), func() bool {
		ready := 0
		for _, w := range d.workerViews() {
			if w.Ready {
				ready++
			}
		}
		return ready == topo.workers
	})
	return d
}

// scaleNATS allocates the nodes' ports below the ephemeral range, each distinct: allocNATS's
// freePort closes its probe, so two of its ports can coincide (a run saw one node's client port
// handed out again as another's monitor port) and any :0 bind can take one before the node starts.
func scaleNATS(t *testing.T, n int) []*natsNode {
	t.Helper()
	nodes := make([]*natsNode, n)
	next := 5000
	port := func() int {
		p := lowFreePort(t, next, 9000-next)
		next = p + 1
		return p
	}
	for i := range nodes {
		nodes[i] = &natsNode{index: i, port: port(), clusterPort: port(), monPort: port()}
	}
	return nodes
}

// lowFreePort is a port in [from, from+n) free for both TCP and UDP on loopback now.
func lowFreePort(t *testing.T, from, n int) int {
	t.Helper()
	for p := from; p < from+n; p++ {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", p))
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		return p
	}
	t.Fatalf("no port free for TCP and UDP in %d..%d", from, from+n-1)
	return 0
}

func (d *deployment) workerViews() []wire.WorkerView {
	msg, err := d.nc.Request(subjects.API("workers"), nil, 2*time.Second)
	if err != nil {
		return nil
	}
	var rep wire.WorkersReply
	if json.Unmarshal(msg.Data, &rep) != nil {
		return nil
	}
	return rep.Workers
}

// startPlain runs the node without TLS or authorization (see the file comment).
func (nd *natsNode) startPlain(t *testing.T, all []*natsNode) {
	t.Helper()
	conf := "max_payload: 1MB\n"
	if len(all) > 1 {
		var routes []string
		for _, o := range all {
			if o != nd {
				routes = append(routes, fmt.Sprintf("%q", fmt.Sprintf("nats://127.0.0.1:%d", o.clusterPort)))
			}
		}
		conf += fmt.Sprintf("cluster {\n  name: scale\n  listen: \"127.0.0.1:%d\"\n  routes: [%s]\n}\n", nd.clusterPort, strings.Join(routes, ", "))
	}
	confFile := filepath.Join(t.TempDir(), fmt.Sprintf("nats-%d.conf", nd.index))
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	nd.process = start(t, fmt.Sprintf("nats-%d", nd.index+1), "nats-server", "-c", confFile, "-a", "127.0.0.1",
		"-p", fmt.Sprint(nd.port), "-m", fmt.Sprint(nd.monPort), "-n", fmt.Sprintf("n%d", nd.index+1))
	eventually(t, 20*time.Second, "nats-server "+nd.name+" to accept clients", func() bool {
		nc, err := nats.Connect(nd.url())
		if err != nil {
			return false
		}
		nc.Close()
		return true
	})
}

// churnSetupBound is the setup p99 (ms) under which a call start rate counts as sustained.
const churnSetupBound = 100.0

// scaleRun is what one load of a topology measured.
type scaleRun struct {
	topo                    topology
	name                    string
	calls                   int
	rate                    int                // churn runs: call starts per second
	cores                   map[string]float64 // CPU seconds per second over the steady window, by class
	rssMB                   map[string]float64 // resident memory at the window's end, by class
	subs                    int                // NATS subscriptions (sum over nodes) at the window's end
	lost, sent              int64
	refused, failed         int
	setupP99, p99, p50      float64 // ms
	natsInMsgs, natsOutMsgs int64   // over the window, summed over nodes
	window                  time.Duration
}

// perCall is the CPU, in cores, that one concurrent call cost across every process.
func (r *scaleRun) perCall() float64 {
	var sum float64
	for _, c := range r.cores {
		sum += c
	}
	return sum / float64(r.calls)
}

// load runs one load tester per ingest, calls spread over them, and samples every process's CPU
// over the window in which all calls are up.
func (d *deployment) load(t *testing.T, name string, calls int, callDur, runTime time.Duration, ramp float64) *scaleRun {
	t.Helper()
	r := &scaleRun{topo: d.topo, name: name, calls: calls, cores: map[string]float64{}, rssMB: map[string]float64{}}
	per := calls / len(d.sip)
	type tester struct {
		cmd  *exec.Cmd
		json string
		log  string
	}
	var ts []tester
	dir := t.TempDir()
	for i, addr := range d.sip {
		tt := tester{json: filepath.Join(dir, fmt.Sprintf("lt-%d.json", i)), log: filepath.Join(dir, fmt.Sprintf("lt-%d.log", i))}
		f, err := os.Create(tt.log)
		if err != nil {
			t.Fatal(err)
		}
		// Each tester talks to its own NATS node, as ingests and testers in different zones would.
		// Bounded: a tester that outlives its calls, settle and a margin is killed, and the run fails.
		ctx, cancel := context.WithTimeout(context.Background(), callDur+runTime+2*time.Minute)
		t.Cleanup(cancel)
		tt.cmd = exec.CommandContext(ctx, filepath.Join(binDir, "loadtest"), "-mode", "sip", "-nats", d.nats[i%len(d.nats)].url(), "-sip", addr,
			"-input", "../internal/sample/call.wav", "-calls", fmt.Sprint(per), "-ramp", fmt.Sprint(ramp/float64(len(d.sip))),
			"-call-duration", callDur.String(), "-run-time", runTime.String(), "-tenant", fmt.Sprintf("scale%d", i),
			"-settle", "20s", "-quiet", "-json", tt.json)
		tt.cmd.Stdout, tt.cmd.Stderr = f, f
		if err := tt.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tt.cmd.Process.Kill(); f.Close() })
		ts = append(ts, tt)
	}
	// The window opens once every call of the ramp has started and closes before the testers stop
	// keeping calls up.
	rampTime := time.Duration(float64(calls) / ramp * float64(time.Second))
	time.Sleep(rampTime + 3*time.Second)
	r.window = runTime - rampTime - 5*time.Second
	if r.window < 5*time.Second {
		r.window = 5 * time.Second
	}
	before := d.sample()
	inBefore, outBefore, _ := d.natsCounters()
	time.Sleep(r.window)
	after := d.sample()
	inAfter, outAfter, subs := d.natsCounters()
	r.natsInMsgs, r.natsOutMsgs, r.subs = inAfter-inBefore, outAfter-outBefore, subs
	for class, ps := range d.procs {
		for _, p := range ps {
			b, a := before[p], after[p]
			r.cores[class] += (a.cpu - b.cpu) / r.window.Seconds()
			r.rssMB[class] += float64(a.rss) / (1 << 20)
		}
	}
	for _, tt := range ts {
		err := tt.cmd.Wait()
		b, _ := os.ReadFile(tt.log)
		if err != nil {
			t.Errorf("%s %s: load tester: %v\n%s", d.topo.name, name, err, b)
			continue
		}
		var rep struct {
			Phases []struct {
				Refused int `json:"calls_refused"`
				Failed  int `json:"calls_failed"`
				Setup   struct {
					P99 float64 `json:"p99_ms"`
				} `json:"setup"`
				Latency struct {
					P50 float64 `json:"p50_ms"`
					P99 float64 `json:"p99_ms"`
				} `json:"latency"`
				Frames struct {
					Sent, Lost, Unaccounted int64
				} `json:"frames"`
			} `json:"phases"`
		}
		data, err := os.ReadFile(tt.json)
		if err != nil || json.Unmarshal(data, &rep) != nil || len(rep.Phases) == 0 {
			t.Errorf("%s %s: no report: %v", d.topo.name, name, err)
			continue
		}
		ph := rep.Phases[len(rep.Phases)-1]
		r.refused += ph.Refused
		r.failed += ph.Failed
		r.sent += ph.Frames.Sent
		r.lost += ph.Frames.Lost + ph.Frames.Unaccounted
		r.setupP99 = max(r.setupP99, ph.Setup.P99)
		r.p99 = max(r.p99, ph.Latency.P99)
		r.p50 = max(r.p50, ph.Latency.P50)
	}
	// Let the calls' subscriptions go before the next load starts.
	eventually(t, 60*time.Second, "workers to release every call", func() bool {
		ws := d.workerViews()
		if len(ws) == 0 {
			return false
		}
		for _, w := range ws {
			if w.Active != 0 {
				return false
			}
		}
		return true
	})
	return r
}

// writeScaleJSON writes the runs in the form loadtest/capacity reads (capacity.ScaleRun), for its
// testdata.
func writeScaleJSON(t *testing.T, path string, rs []*scaleRun) {
	t.Helper()
	type out struct {
		Topology      string             `json:"topology"`
		NATSNodes     int                `json:"nats"`
		Routers       int                `json:"routers"`
		Ingests       int                `json:"ingests"`
		Workers       int                `json:"workers"`
		Name          string             `json:"name"`
		Calls         int                `json:"calls"`
		Cores         map[string]float64 `json:"cores"`
		RSSMB         map[string]float64 `json:"rss_mb"`
		Subs          int                `json:"subs"`
		NATSInPerSec  float64            `json:"nats_in_msgs_per_s"`
		NATSOutPerSec float64            `json:"nats_out_msgs_per_s"`
		P99           float64            `json:"p99_ms"`
		SetupP99      float64            `json:"setup_p99_ms"`
	}
	var runs []out
	for _, r := range rs {
		runs = append(runs, out{r.topo.name, r.topo.nats, r.topo.routers, r.topo.ingests, r.topo.workers, r.name, r.calls,
			r.cores, r.rssMB, r.subs, float64(r.natsInMsgs) / r.window.Seconds(), float64(r.natsOutMsgs) / r.window.Seconds(), r.p99, r.setupP99})
	}
	b, err := json.MarshalIndent(runs, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		t.Errorf("CALLROUTER_SCALE_JSON: %v", err)
	}
}

type procSample struct {
	cpu float64 // utime+stime, seconds
	rss int64
}

// sample reads every process's CPU time and RSS from /proc.
func (d *deployment) sample() map[*process]procSample {
	out := map[*process]procSample{}
	tick := 100.0 // USER_HZ on Linux
	for _, ps := range d.procs {
		for _, p := range ps {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
			if err != nil {
				continue
			}
			s := string(b)
			f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
			// fields after the command: state is f[0]; utime f[11], stime f[12], rss (pages) f[21]
			ut, _ := strconv.ParseFloat(f[11], 64)
			st, _ := strconv.ParseFloat(f[12], 64)
			rss, _ := strconv.ParseInt(f[21], 10, 64)
			out[p] = procSample{cpu: (ut + st) / tick, rss: rss * int64(os.Getpagesize())}
		}
	}
	return out
}

// natsCounters sums in_msgs, out_msgs and subscriptions over the nodes' /varz.
func (d *deployment) natsCounters() (in, out int64, subs int) {
	for _, nd := range d.nats {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/varz", nd.monPort))
		if err != nil {
			continue
		}
		var v struct {
			InMsgs  int64 `json:"in_msgs"`
			OutMsgs int64 `json:"out_msgs"`
			Subs    int   `json:"subscriptions"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&v)
		resp.Body.Close()
		in, out, subs = in+v.InMsgs, out+v.OutMsgs, subs+v.Subs
	}
	return
}

var classes = []string{"ingest", "nats", "router", "worker"}

func scaleTable(rs []*scaleRun) string {
	var b strings.Builder
	fmt.Fprintf(&b, "| topology | calls | CPU ms/call-s: ingest | nats | router | worker | total | RSS MB: ingest | nats | worker | NATS subs | NATS msgs in/s | p50 / p99 ms | setup p99 ms | lost |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		fmt.Fprintf(&b, "| %s (%d nats, %d routers, %d ingests, %d workers) | %d |", r.topo.name, r.topo.nats, r.topo.routers, r.topo.ingests, r.topo.workers, r.calls)
		for _, c := range classes {
			fmt.Fprintf(&b, " %.3f |", r.cores[c]*1000/float64(r.calls))
		}
		fmt.Fprintf(&b, " %.3f | %.0f | %.0f | %.0f | %d | %.0f | %.1f / %.1f | %.0f | %d of %d |\n", r.perCall()*1000,
			r.rssMB["ingest"], r.rssMB["nats"], r.rssMB["worker"], r.subs, float64(r.natsInMsgs)/r.window.Seconds(), r.p50, r.p99, r.setupP99, r.lost, r.sent)
	}
	return b.String()
}

func churnTable(rs []*scaleRun) string {
	sort.SliceStable(rs, func(i, j int) bool { return rs[i].topo.name > rs[j].topo.name })
	var b strings.Builder
	fmt.Fprintf(&b, "| topology | start rate | setup p99 ms | p99 ms | refused | failed | lost | CPU cores total |\n|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		var sum float64
		for _, c := range r.cores {
			sum += c
		}
		fmt.Fprintf(&b, "| %s | %s | %.0f | %.1f | %d | %d | %d of %d | %.2f |\n", r.topo.name, r.name, r.setupP99, r.p99, r.refused, r.failed, r.lost, r.sent, sum)
	}
	return b.String()
}
