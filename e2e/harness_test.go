// Package e2e runs callrouter as real processes (the built ingest, router and worker binaries and
// real nats-server processes on loopback) and kills, stops and drains them to prove that no frame
// is lost. Every processed sequence number is read back from the workers' seqlog files.
//
// NATS runs as in production (docs/security.md): TLS on client and route connections with
// verified client certificates, authenticated routes, and the least-privilege identities that
// callrouter-auth generates from the identities file below; each component signs in with its
// role's nkey, the test's own connection as the operator "e2e".
package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/peertest"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wav"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

var binDir string

// identities is the e2e deployment's identities file: one identity per role, shared by its
// nodes, as in the Kubernetes overlays.
const identities = `
tenant e2e
pool default shared
ingest
router
worker default
admin e2e
`

// authDir holds what callrouter-auth generated: <identity>.nk, auth.conf and tls/.
var authDir string

// routePassword authenticates the nats-server routes to each other.
const routePassword = "e2e-route-secret"

func tlsFile(name string) string { return filepath.Join(authDir, "tls", name) }

// natsFlags are a component's flags to sign in as the identity name over TLS.
func natsFlags(name string) []string {
	return []string{"-nats-nkey", filepath.Join(authDir, name+".nk"), "-nats-tls-ca", tlsFile("ca.crt"),
		"-nats-tls-cert", tlsFile("client.crt"), "-nats-tls-key", tlsFile("client.key")}
}

// natsOptions are the test's own connection options: the operator identity over TLS.
func natsOptions() []nats.Option {
	o, err := nats.NkeyOptionFromSeed(filepath.Join(authDir, "admin-e2e.nk"))
	if err != nil {
		panic(err)
	}
	data, _ := os.ReadFile(filepath.Join(authDir, "admin-e2e.nk"))
	kp, err := nkeys.ParseDecoratedNKey(data)
	if err != nil {
		panic(err)
	}
	pub, _ := kp.PublicKey()
	return []nats.Option{o, nats.CustomInboxPrefix(bus.InboxPrefix(pub)), nats.RootCAs(tlsFile("ca.crt")), nats.ClientCert(tlsFile("client.crt"), tlsFile("client.key"))}
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "callrouter-e2e-bin")
	if err != nil {
		panic(err)
	}
	binDir = dir
	build := exec.Command("go", "build", "-o", dir+"/", "../cmd/ingest", "../cmd/router", "../cmd/worker", "../cmd/callrouter-auth")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building the binaries:", err)
		os.Exit(1)
	}
	build = exec.Command("go", "build", "-o", filepath.Join(dir, "nats-server"), "github.com/nats-io/nats-server/v2")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building nats-server:", err)
		os.Exit(1)
	}
	authDir = filepath.Join(dir, "auth")
	spec := filepath.Join(dir, "identities.conf")
	if err := os.WriteFile(spec, []byte(identities), 0o600); err != nil {
		panic(err)
	}
	for _, args := range [][]string{{"keys", "-spec", spec, "-out", authDir}, {"tls", "-out", filepath.Join(authDir, "tls"), "-hosts", "127.0.0.1"}} {
		gen := exec.Command(filepath.Join(dir, "callrouter-auth"), args...)
		gen.Stderr = os.Stderr
		if err := gen.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: callrouter-auth", args[0]+":", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// process is one child process; its output goes to a log file shown when the test fails.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

func start(t *testing.T, name, bin string, args ...string) *process {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	p := &process{name: name, log: logPath, done: make(chan struct{})}
	p.cmd = exec.Command(filepath.Join(binDir, bin), args...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	p.cmd.Env = append(os.Environ(), "GORACE=halt_on_error=1")
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.signal(syscall.SIGKILL)
		<-p.done
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			lines := strings.Split(string(b), "\n")
			if len(lines) > 40 {
				lines = lines[len(lines)-40:]
			}
			t.Logf("--- last lines of %s ---\n%s", name, strings.Join(lines, "\n"))
		}
	})
	return p
}

func (p *process) signal(s syscall.Signal) {
	if p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(s)
	}
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// natsNode is a nats-server process.
type natsNode struct {
	*process
	index                      int
	port, clusterPort, monPort int
}

// hasClient reports whether a client connection with this name is attached to the node, from the
// server's own /connz monitoring endpoint.
func (n *natsNode) hasClient(name string) bool {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/connz?limit=4096", n.monPort))
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var cz struct {
		Connections []struct {
			Name string `json:"name"`
		} `json:"connections"`
	}
	if json.NewDecoder(resp.Body).Decode(&cz) != nil {
		return false
	}
	for _, c := range cz.Connections {
		if c.Name == name {
			return true
		}
	}
	return false
}

func (n *natsNode) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.port) }

// startNATS starts one server, or a cluster of n joined by routes.
func startNATS(t *testing.T, n int) []*natsNode {
	t.Helper()
	nodes := allocNATS(t, n)
	for _, nd := range nodes {
		nd.start(t, nodes)
	}
	return nodes
}

// allocNATS picks the ports of n nodes without starting them.
func allocNATS(t *testing.T, n int) []*natsNode {
	t.Helper()
	nodes := make([]*natsNode, n)
	first := peertest.Ports(t, 3*n)
	for i := range nodes {
		p := first + 3*i
		nodes[i] = &natsNode{index: i, port: p, clusterPort: p + 1, monPort: p + 2}
	}
	return nodes
}

// start runs the node (again, after it was killed: same ports) and waits until it accepts clients.
func (nd *natsNode) start(t *testing.T, all []*natsNode) {
	t.Helper()
	tlsBlock := fmt.Sprintf("tls {\n  cert_file: %q\n  key_file: %q\n  ca_file: %q\n  verify: true\n  timeout: 5\n}\n",
		tlsFile("server.crt"), tlsFile("server.key"), tlsFile("ca.crt"))
	conf := "include auth.conf\n" + tlsBlock // relative to this file, in authDir
	if len(all) > 1 {
		var routes []string
		for _, o := range all {
			if o != nd {
				routes = append(routes, fmt.Sprintf("%q", fmt.Sprintf("nats://route:%s@127.0.0.1:%d", routePassword, o.clusterPort)))
			}
		}
		conf += fmt.Sprintf("cluster {\n  name: e2e\n  listen: \"127.0.0.1:%d\"\n  authorization {user: route, password: %q}\n  routes: [%s]\n  %s}\n",
			nd.clusterPort, routePassword, strings.Join(routes, ", "), strings.ReplaceAll(tlsBlock, "\n", "\n  "))
	}
	confFile := filepath.Join(authDir, fmt.Sprintf("nats-%d-%d.conf", nd.port, nd.index))
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"-c", confFile, "-a", "127.0.0.1", "-p", fmt.Sprint(nd.port), "-m", fmt.Sprint(nd.monPort), "-n", fmt.Sprintf("n%d", nd.index+1)}
	nd.process = start(t, fmt.Sprintf("nats-%d", nd.index+1), "nats-server", args...)
	eventually(t, 20*time.Second, "nats-server "+nd.name+" to accept clients", func() bool {
		nc, err := nats.Connect(nd.url(), natsOptions()...)
		if err != nil {
			return false
		}
		nc.Close()
		return true
	})
}

func urls(nodes []*natsNode) string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.url())
	}
	return strings.Join(out, ",")
}

// cluster is a callrouter deployment under test.
type cluster struct {
	t       *testing.T
	nats    []*natsNode
	natsURL string
	seqDir  string
	nc      *nats.Conn
	wav     string

	mu     sync.Mutex
	events []wire.Event
	downs  []time.Time
}

func newCluster(t *testing.T, natsNodes int) *cluster {
	t.Helper()
	c := prepareCluster(t, natsNodes)
	for _, nd := range c.nats {
		nd.start(t, c.nats)
	}
	c.waitConnected()
	return c
}

// waitConnected waits for the test's own connection, then flushes its subscriptions.
func (c *cluster) waitConnected() {
	c.t.Helper()
	eventually(c.t, 20*time.Second, "the test's NATS connection", c.nc.IsConnected)
	if err := c.nc.Flush(); err != nil {
		c.t.Fatal(err)
	}
}

// prepareCluster is newCluster without starting NATS: the test's own connection and its
// subscriptions wait for the servers (start each with nd.start(t, c.nats)).
func prepareCluster(t *testing.T, natsNodes int) *cluster {
	t.Helper()
	c := &cluster{t: t, nats: allocNATS(t, natsNodes), seqDir: t.TempDir()}
	c.natsURL = urls(c.nats)
	nc, err := nats.Connect(c.natsURL, append(natsOptions(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond), nats.RetryOnFailedConnect(true))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	c.nc = nc
	if _, err := nc.Subscribe("events.>", func(m *nats.Msg) {
		var ev wire.Event
		if json.Unmarshal(m.Data, &ev) == nil {
			c.mu.Lock()
			c.events = append(c.events, ev)
			c.mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Subscribe(subjects.Bcast(subjects.TopicDown), func(*nats.Msg) {
		c.mu.Lock()
		c.downs = append(c.downs, time.Now())
		c.mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	c.wav = filepath.Join(t.TempDir(), "call.wav")
	writeTone(t, c.wav)
	return c
}

// writeTone writes a 2 s stereo 8 kHz PCM16 WAV (looped by -play-frames).
func writeTone(t *testing.T, path string) {
	t.Helper()
	ch := make([][]byte, 2)
	for c := range ch {
		ch[c] = make([]byte, 16000*2)
		for i := 0; i < 16000; i++ {
			v := int16(6000 * math.Sin(2*math.Pi*float64(250*(c+1))*float64(i)/8000))
			binary.LittleEndian.PutUint16(ch[c][2*i:], uint16(v))
		}
	}
	var b bytes.Buffer
	if err := wav.Write(&b, wav.FormatPCM, 8000, 16, ch); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (c *cluster) router(id string, extra ...string) *process {
	args := append(append([]string{"-id", id, "-nats", c.natsURL, "-http", "127.0.0.1:0", "-log-level", "info"}, natsFlags("router")...), extra...)
	return start(c.t, id, "router", args...)
}

func (c *cluster) worker(id string, extra ...string) *process {
	args := append([]string{"-id", id, "-nats", c.natsURL, "-http", "127.0.0.1:0", "-log-level", "info",
		"-processors", "accounting,seqlog", "-proc-opt", "seqlog.dir=" + c.seqDir}, append(natsFlags("worker-default"), extra...)...)
	return start(c.t, id, "worker", args...)
}

// ingest starts an ingest node playing calls concurrent calls of frames frames each.
func (c *cluster) ingest(id, prefix string, calls, frames int, extra ...string) *process {
	args := append([]string{"-id", id, "-nats", c.natsURL, "-http", "127.0.0.1:0", "-whip-listen", "127.0.0.1:0", "-log-level", "info",
		"-whip-udp", "127.0.0.1:0", "-play", c.wav, "-play-calls", fmt.Sprint(calls), "-play-frames", fmt.Sprint(frames), "-play-tenant", "e2e", "-play-prefix", prefix}, append(natsFlags("ingest"), extra...)...)
	return start(c.t, id, "ingest", args...)
}

func (c *cluster) workers() []wire.WorkerView {
	var rep wire.WorkersReply
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	msg, err := c.nc.RequestWithContext(ctx, subjects.API("workers"), nil)
	if err != nil || json.Unmarshal(msg.Data, &rep) != nil {
		return nil
	}
	return rep.Workers
}

func (c *cluster) waitWorkers(n int) {
	c.t.Helper()
	eventually(c.t, 30*time.Second, fmt.Sprintf("%d ready workers", n), func() bool {
		ready := 0
		for _, w := range c.workers() {
			if w.Ready {
				ready++
			}
		}
		return ready == n
	})
}

// count returns how many events of kind whose call id starts with prefix have arrived.
func (c *cluster) count(kind, prefix string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, ev := range c.events {
		if ev.Kind == kind && strings.HasPrefix(ev.Call, prefix) {
			n++
		}
	}
	return n
}

// first returns the time of the first event of kind after t0.
func (c *cluster) first(kind string, t0 time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ev := range c.events {
		if ev.Kind == kind && ev.Time.After(t0) {
			return ev.Time
		}
	}
	return time.Time{}
}

func (c *cluster) firstDown(t0 time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range c.downs {
		if d.After(t0) {
			return d
		}
	}
	return time.Time{}
}

// waitEnded waits for every call of prefix to end and every worker to let go of them.
func (c *cluster) waitEnded(prefix string, calls int, d time.Duration) {
	c.t.Helper()
	eventually(c.t, d, fmt.Sprintf("%d %s calls to end", calls, prefix), func() bool { return c.count("end", prefix+"-") >= calls })
	eventually(c.t, 15*time.Second, "workers to release every call", func() bool {
		ws := c.workers()
		if ws == nil {
			return false
		}
		for _, w := range ws {
			if w.Active != 0 {
				return false
			}
		}
		return true
	})
}

// legAudit is what the seqlog files say about one leg.
type legAudit struct {
	key            string
	missing        []uint32
	dups, dupsFlag int // extra occurrences, and those carrying the replayed flag
	byWorker       map[string]int
}

// audit reads every seqlog file of calls with prefix and checks seqs 0..frames-1 per leg.
func (c *cluster) audit(prefix string, calls, frames int) []legAudit {
	c.t.Helper()
	files, _ := filepath.Glob(filepath.Join(c.seqDir, "e2e."+prefix+"-*.seq"))
	type rec struct {
		worker string
		r      proc.SeqRecord
	}
	perLeg := map[string][]rec{}
	for _, f := range files {
		parts := strings.Split(strings.TrimSuffix(filepath.Base(f), ".seq"), ".")
		// e2e.<call>.<leg>.<worker>
		if len(parts) != 4 {
			continue
		}
		recs, err := proc.ReadSeqLog(f)
		if err != nil {
			c.t.Fatal(err)
		}
		key := parts[1] + "/" + parts[2]
		for _, r := range recs {
			perLeg[key] = append(perLeg[key], rec{parts[3], r})
		}
	}
	var out []legAudit
	for i := 0; i < calls; i++ {
		for leg := 0; leg < 2; leg++ {
			key := fmt.Sprintf("%s-%d/%d", prefix, i, leg)
			a := legAudit{key: key, byWorker: map[string]int{}}
			seen := make([]int, frames)
			flagged := make([]bool, frames)
			for _, r := range perLeg[key] {
				a.byWorker[r.worker]++
				if int(r.r.Seq) >= frames {
					continue
				}
				seen[r.r.Seq]++
				if r.r.Flags&frame.FlagReplayed != 0 {
					flagged[r.r.Seq] = true
				}
			}
			for s, n := range seen {
				if n == 0 {
					a.missing = append(a.missing, uint32(s))
				}
				if n > 1 {
					a.dups += n - 1
					if flagged[s] {
						a.dupsFlag += n - 1
					}
				}
			}
			out = append(out, a)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].key < out[j].key })
	return out
}

// totals sums an audit.
func totals(as []legAudit) (missing, dups, unflagged int) {
	for _, a := range as {
		missing += len(a.missing)
		dups += a.dups
		unflagged += a.dups - a.dupsFlag
	}
	return
}

func (c *cluster) report(name string, as []legAudit, extra string) {
	m, d, u := totals(as)
	c.t.Logf("%s: %d legs, %d frames missing, %d duplicated (%d not flagged replayed)%s", name, len(as), m, d, u, extra)
	if m > 0 {
		shown := 0
		for _, a := range as {
			if len(a.missing) > 0 && shown < 5 {
				shown++
				c.t.Logf("  %s missing %d, e.g. %v, by worker %v", a.key, len(a.missing), a.missing[:min(8, len(a.missing))], a.byWorker)
			}
		}
	}
}

// countFrom returns how many frames the seqlog files of one worker hold.
func (c *cluster) countFrom(worker string) int {
	files, _ := filepath.Glob(filepath.Join(c.seqDir, "*."+worker+".seq"))
	n := 0
	for _, f := range files {
		if st, err := os.Stat(f); err == nil {
			n += int(st.Size()) / proc.SeqRecordLen
		}
	}
	return n
}

// eventsFrom returns how many events one worker has published.
func (c *cluster) eventsFrom(worker string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, ev := range c.events {
		if ev.Source == "worker/"+worker {
			n++
		}
	}
	return n
}
