package sip

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/peertest"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// legLog is what the test processor saw of one leg.
type legLog struct {
	seqs      []uint32
	gapFilled int
	filledAt  []uint32
	dups      int
	gaps      []proc.Gap
	payload   []byte
	codec     frame.Codec
	name      string
}

// recorder collects, per "tenant/call/leg", every frame a worker processed.
type recorder struct {
	mu      sync.Mutex
	legs    map[string]*legLog
	stopped map[string]string // "tenant/call" → stop reason
}

var rec = &recorder{legs: map[string]*legLog{}, stopped: map[string]string{}}

func (r *recorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.legs, r.stopped = map[string]*legLog{}, map[string]string{}
}

func (r *recorder) leg(k string) *legLog {
	if r.legs[k] == nil {
		r.legs[k] = &legLog{}
	}
	return r.legs[k]
}

func (r *recorder) snapshot(k string) legLog {
	r.mu.Lock()
	defer r.mu.Unlock()
	if l := r.legs[k]; l != nil {
		c := *l
		c.seqs = append([]uint32(nil), l.seqs...)
		c.payload = append([]byte(nil), l.payload...)
		return c
	}
	return legLog{}
}

func (r *recorder) stoppedCalls() map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]string{}
	for k, v := range r.stopped {
		out[k] = v
	}
	return out
}

type recProc struct{}
type recCall struct{ c proc.Call }

func init() {
	proc.Register("siprecorder", func(proc.Options) (proc.Processor, error) { return recProc{}, nil })
}

func (recProc) Start(c proc.Call) (proc.Handler, error) { return &recCall{c}, nil }

func (h *recCall) key(leg uint8) string { return fmt.Sprintf("%s/%d", h.c.Spec().ID, leg) }

func (h *recCall) Frame(f *proc.Frame) {
	rec.mu.Lock()
	l := rec.leg(h.key(f.Header.Leg))
	l.seqs = append(l.seqs, f.Header.Seq)
	if f.Header.Has(frame.FlagGapFilled) {
		l.gapFilled++
		l.filledAt = append(l.filledAt, f.Header.Seq)
	}
	l.payload = append(l.payload, f.Payload...)
	l.codec = f.Header.Codec
	if int(f.Header.Leg) < len(h.c.Spec().Legs) {
		l.name = h.c.Spec().Legs[f.Header.Leg].Name
	}
	rec.mu.Unlock()
}

func (h *recCall) Duplicate(hd *frame.Header) {
	rec.mu.Lock()
	rec.leg(h.key(hd.Leg)).dups++
	rec.mu.Unlock()
}

func (h *recCall) Gap(g proc.Gap) {
	rec.mu.Lock()
	l := rec.leg(h.key(g.Leg))
	l.gaps = append(l.gaps, g)
	rec.mu.Unlock()
}

func (h *recCall) Stop(reason string) {
	rec.mu.Lock()
	rec.stopped[h.c.Spec().ID.String()] = reason
	rec.mu.Unlock()
}

func testLogger(t testing.TB) zerolog.Logger {
	if os.Getenv("CALLROUTER_TEST_LOG") != "" {
		return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel)
	}
	return zerolog.Nop()
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// env is a whole callrouter with the SIP source in front of it.
type env struct {
	st     *stack.Stack
	srv    *Server
	addr   string
	reg    *prometheus.Registry // the SIP server's metrics
	events *eventLog
}

type workerConfig = worker.Config

var netipLoopback = netip.MustParseAddr("127.0.0.1")

// startEnv starts a stack with workers workers and a SIP server configured by mutate.
func startEnv(t testing.TB, workers int, mutate func(*Config)) *env {
	return startEnvW(t, workers, nil, mutate)
}

// startEnvW is startEnv with a worker configuration hook.
func startEnvW(t testing.TB, workers int, wmutate func(*worker.Config), mutate func(*Config)) *env {
	t.Helper()
	rec.reset()
	wc := worker.DefaultConfig()
	wc.Processors = []string{"accounting", "siprecorder"}
	wc.Capacity = 500
	// These tests check that every frame of every call arrives, on a shared 2-core machine that
	// the race detector and other packages' tests load: a worker's overload protection (no
	// offers past -lag-threshold, stale-frame drops) would rightly refuse or drop there, and is
	// covered by internal/stack's tests.
	wc.LagThreshold = time.Minute
	wc.MaxFrameAge = time.Minute
	if wmutate != nil {
		wmutate(&wc)
	}
	st, err := stack.Start(stack.Config{Workers: workers, Worker: wc, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "workers visible to the router", func() bool { return len(st.Routers[0].Workers()) == workers })
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.RTPPortMin, cfg.RTPPortMax = freeRange(t, 2000)
	cfg.PortQuarantine = time.Second
	cfg.DrainTimeout = time.Second
	cfg.RTPTimeout = 10 * time.Second
	// This machine is shared and often loaded: a sender stalled for longer than the default
	// silence threshold would get real-time silence inserted, which the exact-audio checks
	// would see. The threshold's own behaviour is covered by the cutter tests.
	cfg.SilenceFill = 2 * time.Second
	if mutate != nil {
		mutate(&cfg)
	}
	reg := prometheus.NewRegistry()
	srv, err := New(cfg, Deps{Log: testLogger(t), Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{st: st, srv: srv, reg: reg, events: watchEvents(t, st.URL)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, st.Ingest) }()
	select {
	case <-srv.Ready():
	case err := <-done:
		t.Fatal(err)
	}
	e.addr = srv.Addr().String()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		e.events.close()
		_ = st.Close()
	})
	return e
}

// freeRange returns a random even-aligned port range of n ports.
func freeRange(t testing.TB, n int) (int, int) {
	lo := 20000 + 2*rand.IntN(5000)
	return lo, lo + n
}

// eventLog collects call events from NATS.
type eventLog struct {
	nc *nats.Conn
	*bus.Events
}

func watchEvents(t testing.TB, url string) *eventLog {
	bc := bus.DefaultConfig()
	bc.URL, bc.Name = url, "test events"
	nc, err := bus.Connect(bc, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	evs, err := bus.CollectEvents(nc, "events.>")
	if err != nil {
		t.Fatal(err)
	}
	return &eventLog{nc: nc, Events: evs}
}

func (l *eventLog) close() { l.nc.Close() }

func (l *eventLog) of(kind string) []wire.Event { return l.Of(kind) }

// sipp runs SIPp in dir against the env and returns its combined output; it fails the test when
// SIPp reports failed calls.
func (e *env) sipp(t testing.TB, dir string, timeout time.Duration, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("sipp"); err != nil {
		peertest.Missing(t, "sipp (Debian sip-tester) is not installed")
	}
	errFile := filepath.Join(dir, "errors.log")
	// SIPp binds its media port and the three above it; another process can take one of them
	// between our probe and SIPp's bind, so a bind failure (and only that) is retried.
	for attempt := 1; ; attempt++ {
		base := []string{e.addr, "-i", "127.0.0.1", "-mi", "127.0.0.1", "-mp", strconv.Itoa(peertest.Ports(t, 4)), "-nostdin",
			"-cp", strconv.Itoa(peertest.Port(t)), "-ci", "127.0.0.1", "-timeout", strconv.Itoa(int(timeout.Seconds())) + "s",
			"-timeout_error", "-trace_err", "-error_file", errFile}
		_ = os.Remove(errFile)
		ctx, cancel := context.WithTimeout(context.Background(), timeout+10*time.Second)
		cmd := exec.CommandContext(ctx, "sipp", append(base, args...)...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		cancel()
		if err == nil {
			return string(out)
		}
		errs, _ := os.ReadFile(errFile)
		if attempt < 3 && bytes.Contains(errs, []byte("Unable to bind")) {
			t.Logf("sipp could not bind its ports (attempt %d), retrying: %s", attempt, tail(errs, 300))
			continue
		}
		t.Fatalf("sipp %v: %v\n%s\nerrors:\n%s", args, err, tail(out, 3000), tail(errs, 3000))
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// pcapDir returns a directory where SIPp's built-in uac_pcap scenario finds its pcap files.
func pcapDir(t testing.TB) string {
	dir := t.TempDir()
	if _, err := os.Stat("/usr/share/sip-tester/g711a.pcap"); err != nil {
		peertest.Missing(t, "SIPp pcaps (/usr/share/sip-tester) not installed")
	}
	if err := os.Symlink("/usr/share/sip-tester", filepath.Join(dir, "pcap")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// pcapRTP returns the RTP payloads of a pcap file, in file order.
func pcapRTP(t testing.TB, path string) [][]byte {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 24 {
		t.Fatal("short pcap")
	}
	le := binary.LittleEndian
	if b[0] == 0xa1 { // big-endian magic
		t.Fatal("big-endian pcap not handled")
	}
	link := le.Uint32(b[20:])
	var out [][]byte
	for off := 24; off+16 <= len(b); {
		n := int(le.Uint32(b[off+8:]))
		pkt := b[off+16 : off+16+n]
		off += 16 + n
		switch link {
		case 1:
			pkt = pkt[14:]
		case 113:
			pkt = pkt[16:]
		default:
			t.Fatalf("pcap link type %d", link)
		}
		ihl := int(pkt[0]&0x0f) * 4
		udp := pkt[ihl:]
		rtpb := udp[8:]
		cc := int(rtpb[0] & 0x0f)
		out = append(out, rtpb[12+4*cc:])
	}
	return out
}
