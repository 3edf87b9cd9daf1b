package hostile

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/wav"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

// binDir holds the built ingest, router, worker and nats-server; buildErr says why it could not
// be filled (the test then reports the missing peer).
var binDir, buildErr = "", ""

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "callrouter-hostile-bin")
	if err != nil {
		panic(err)
	}
	binDir = dir
	build := exec.Command("go", "build", "-o", dir+"/", "../cmd/ingest", "../cmd/router", "../cmd/worker")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "hostile: building the binaries:", err)
		os.Exit(1)
	}
	build = exec.Command("go", "build", "-o", filepath.Join(dir, "nats-server"), "github.com/nats-io/nats-server/v2")
	if out, err := build.CombinedOutput(); err != nil {
		buildErr = fmt.Sprintf("nats-server could not be built: %v: %s", err, out)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freePort returns a port that was free for both TCP and UDP on 127.0.0.1 a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
		l.Close()
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no port free for both TCP and UDP")
	return 0
}

// eventually polls cond every 25 ms until it holds or d has passed.
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(25 * time.Millisecond)
	}
	return true
}

// process is one child process; its output goes to a log file shown when the test fails.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
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
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			lines := strings.Split(string(b), "\n")
			if len(lines) > 25 {
				lines = lines[len(lines)-25:]
			}
			t.Logf("--- last lines of %s ---\n%s", name, strings.Join(lines, "\n"))
		}
	})
	return p
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// usage is a process's CPU time and resident memory, from /proc.
type usage struct {
	cpu       time.Duration
	rss, peak int64 // bytes: resident now, and the most ever (VmHWM)
}

func (p *process) usage() usage {
	var u usage
	pid := p.cmd.Process.Pid
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		// Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
		if i := bytes.LastIndexByte(b, ')'); i > 0 {
			f := strings.Fields(string(b[i+1:]))
			if len(f) > 13 {
				ut, _ := strconv.ParseInt(f[11], 10, 64)
				st, _ := strconv.ParseInt(f[12], 10, 64)
				u.cpu = time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
			}
		}
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			for _, f := range []struct {
				name string
				to   *int64
			}{{"VmRSS:", &u.rss}, {"VmHWM:", &u.peak}} {
				if v, ok := strings.CutPrefix(sc.Text(), f.name); ok {
					kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
					*f.to = kb * 1024
				}
			}
		}
	}
	return u
}

// Victim calls: played by the attacked ingest for the whole suite, two legs each.
const (
	victimTenant = "hostile"
	victimPrefix = "victim"
	victimCalls  = 3
	victimFrames = 20000 // 400 s: longer than the suite
	sipTenant    = "sip"
	whipTenant   = "acme"
	whipToken    = "tok-hostile-0123456789"
)

// node is one attacked deployment: nats-server, a router, a worker and the ingest under attack.
type node struct {
	t                   *testing.T
	natsProc            *process
	natsURL             string
	router, worker, ing *process
	workerID, ingestID  string
	nc                  *nats.Conn
	seqDir, recDir      string
	httpAddr            string // the ingest's /healthz and /metrics
	whipAddr            string // the ingest's public listener: WHIP and the call page
	sip                 *net.UDPAddr
	rtpMin, rtpMax      int
	mu                  sync.Mutex
	events              []wire.Event
	sacrificed          map[string]bool // victim calls an attack may legitimately disturb
}

func startNode(t *testing.T) *node {
	t.Helper()
	n := &node{t: t, seqDir: t.TempDir(), recDir: t.TempDir(), workerID: "w1", ingestID: "i1", sacrificed: map[string]bool{}}
	natsPort := freePort(t)
	n.natsURL = fmt.Sprintf("nats://127.0.0.1:%d", natsPort)
	n.natsProc = start(t, "nats", "nats-server", "-a", "127.0.0.1", "-p", fmt.Sprint(natsPort))
	if !eventually(20*time.Second, func() bool {
		nc, err := nats.Connect(n.natsURL)
		if err != nil {
			return false
		}
		nc.Close()
		return true
	}) {
		t.Fatal("nats-server did not accept clients")
	}
	nc, err := nats.Connect(n.natsURL, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	n.nc = nc
	if _, err := nc.Subscribe("events.>", func(m *nats.Msg) {
		var ev wire.Event
		if json.Unmarshal(m.Data, &ev) == nil {
			n.mu.Lock()
			n.events = append(n.events, ev)
			n.mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()

	dir := t.TempDir()
	wavPath := filepath.Join(dir, "victim.wav")
	writeTone(t, wavPath)
	tokens := filepath.Join(dir, "whip-tokens")
	if err := os.WriteFile(tokens, []byte(whipTenant+" "+whipToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// An RTP range of its own below the ephemeral ports, so that the unallocated-port flood
	// cannot hit another test's sockets.
	n.rtpMin = 12000 + 2*int(time.Now().UnixNano()%3500)
	n.rtpMax = n.rtpMin + 398

	n.router = start(t, "router", "router", "-id", "r1", "-nats", n.natsURL, "-http", "127.0.0.1:0", "-log-level", "warn")
	n.worker = start(t, n.workerID, "worker", "-id", n.workerID, "-nats", n.natsURL, "-http", "127.0.0.1:0", "-log-level", "warn",
		"-processors", "accounting,seqlog,record", "-proc-opt", "seqlog.dir="+n.seqDir+",record.dir="+n.recDir)
	n.httpAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	n.whipAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	n.sip = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: freePort(t)}
	n.ing = start(t, n.ingestID, "ingest", "-id", n.ingestID, "-nats", n.natsURL, "-http", n.httpAddr, "-whip-listen", n.whipAddr, "-log-level", "warn",
		"-sip-listen", n.sip.String(), "-sip-tenant", sipTenant,
		"-sip-rtp-port-min", fmt.Sprint(n.rtpMin), "-sip-rtp-port-max", fmt.Sprint(n.rtpMax),
		"-whip-udp", "127.0.0.1:0", "-whip-token-file", tokens,
		"-play", wavPath, "-play-calls", fmt.Sprint(victimCalls), "-play-frames", fmt.Sprint(victimFrames),
		"-play-tenant", victimTenant, "-play-prefix", victimPrefix)
	if !eventually(60*time.Second, func() bool { return n.count("placed", victimPrefix+"-") >= victimCalls }) {
		t.Fatal("the victim calls were not placed")
	}
	if !eventually(30*time.Second, func() bool {
		for _, l := range n.victimLegs() {
			if l.max < 25 {
				return false
			}
		}
		return true
	}) {
		t.Fatal("the victim calls' frames do not reach the worker")
	}
	return n
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

// count returns how many events of kind whose call id starts with prefix have arrived.
func (n *node) count(kind, prefix string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := 0
	for _, ev := range n.events {
		if ev.Kind == kind && strings.HasPrefix(ev.Call, prefix) {
			c++
		}
	}
	return c
}

// victimGaps sums the frames of "gap" events on victim calls not sacrificed, by cause.
func (n *node) victimGaps() map[string]int {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := map[string]int{}
	for _, ev := range n.events {
		if ev.Kind != "gap" || ev.Tenant != victimTenant || n.sacrificed[ev.Call] {
			continue
		}
		var g proc.Gap
		if json.Unmarshal(ev.Data, &g) == nil {
			out[g.Cause] += g.Count()
		}
	}
	return out
}

// legState is what the seqlog files say about one victim leg so far.
type legState struct {
	key   string
	max   int // highest sequence processed, -1 before the first
	holes int // sequence numbers below max never processed
}

// victimLegs reads the seqlog files of the victim calls that were not sacrificed.
func (n *node) victimLegs() []legState {
	var out []legState
	for i := 0; i < victimCalls; i++ {
		call := fmt.Sprintf("%s-%d", victimPrefix, i)
		if n.sacrificed[call] {
			continue
		}
		for leg := 0; leg < 2; leg++ {
			files, _ := filepath.Glob(filepath.Join(n.seqDir, fmt.Sprintf("%s.%s.%d.*.seq", victimTenant, call, leg)))
			st := legState{key: fmt.Sprintf("%s/%d", call, leg), max: -1}
			seen := map[uint32]bool{}
			for _, f := range files {
				recs, _ := proc.ReadSeqLog(f)
				for _, r := range recs {
					seen[r.Seq] = true
					if int(r.Seq) > st.max {
						st.max = int(r.Seq)
					}
				}
			}
			st.holes = st.max + 1 - len(seen)
			out = append(out, st)
		}
	}
	return out
}

// alive reports which processes have exited and whether the ingest answers /healthz.
func (n *node) alive() (bool, string) {
	var dead []string
	for _, p := range []*process{n.natsProc, n.router, n.worker, n.ing} {
		if p.exited() {
			dead = append(dead, p.name)
		}
	}
	if len(dead) > 0 {
		return false, "exited: " + strings.Join(dead, ", ")
	}
	if !healthz(n.httpAddr, 3*time.Second) {
		return false, "ingest /healthz does not answer 200"
	}
	return true, ""
}

func healthz(addr string, timeout time.Duration) bool {
	c := &http.Client{Timeout: timeout}
	resp, err := c.Get("http://" + addr + "/healthz")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode == http.StatusOK
}

// metrics returns the size of the ingest's /metrics and its number of series.
func (n *node) metrics() (size, series int) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + n.httpAddr + "/metrics")
	if err != nil {
		return -1, -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			series++
		}
	}
	return len(b), series
}

// metric returns the sum of every series of a metric family whose labels contain all of match.
func (n *node) metric(name string, match ...string) float64 {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + n.httpAddr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	sum := 0.0
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, name+" ") && !strings.HasPrefix(l, name+"{") {
			continue
		}
		ok := true
		for _, m := range match {
			ok = ok && strings.Contains(l, m)
		}
		if i := strings.LastIndexByte(l, ' '); ok && i > 0 {
			v, _ := strconv.ParseFloat(l[i+1:], 64)
			sum += v
		}
	}
	return sum
}

// dirSize returns the bytes of every file under dir.
func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// frameCounter counts the frames published on one call's audio subjects, including those the
// client dropped as a slow consumer.
type frameCounter struct {
	sub *nats.Subscription
	mu  sync.Mutex
	n   int
}

func (n *node) countFrames(tenant, call string) *frameCounter {
	n.t.Helper()
	fc := &frameCounter{}
	sub, err := n.nc.Subscribe(fmt.Sprintf("audio.%s.%s.>", tenant, call), func(*nats.Msg) {
		fc.mu.Lock()
		fc.n++
		fc.mu.Unlock()
	})
	if err != nil {
		n.t.Fatal(err)
	}
	_ = sub.SetPendingLimits(1<<20, 256<<20)
	_ = n.nc.Flush()
	fc.sub = sub
	return fc
}

func (fc *frameCounter) count() int {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	d, _ := fc.sub.Dropped()
	return fc.n + d
}

func (fc *frameCounter) stop() int {
	n := fc.count() // before unsubscribing: the dropped count goes with the subscription
	_ = fc.sub.Unsubscribe()
	return n
}
