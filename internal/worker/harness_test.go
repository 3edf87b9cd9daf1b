package worker_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/player"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/router"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wav"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"
)

// book records, per "tenant/call/leg", what a worker's processors were given.
type book struct {
	mu    sync.Mutex
	seqs  map[string][]uint32
	dups  map[string]int
	gaps  map[string][]proc.Gap
	stops map[string][]string // per "tenant/call"
	evs   map[string][]string // per "tenant/call": event kinds and data, from the test's own subscription
}

var rec = newBook()

func newBook() *book {
	return &book{seqs: map[string][]uint32{}, dups: map[string]int{}, gaps: map[string][]proc.Gap{}, stops: map[string][]string{}, evs: map[string][]string{}}
}

func (b *book) reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seqs, b.dups, b.gaps, b.stops, b.evs = map[string][]uint32{}, map[string]int{}, map[string][]proc.Gap{}, map[string][]string{}, map[string][]string{}
}

func (b *book) seqsOf(k string) []uint32 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]uint32(nil), b.seqs[k]...)
}

func (b *book) gapsOf(k string) []proc.Gap {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]proc.Gap(nil), b.gaps[k]...)
}

func (b *book) stopsOf(k string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.stops[k]...)
}

// seqProc ("wtseq") records every frame, duplicate, gap and stop of every call into rec.
type seqProc struct{}
type seqCall struct{ c proc.Call }

func init() {
	proc.Register("wtseq", func(proc.Options) (proc.Processor, error) { return seqProc{}, nil })
}

func (seqProc) Start(c proc.Call) (proc.Handler, error) { return &seqCall{c}, nil }

func legKey(c proc.Call, leg uint8) string { return fmt.Sprintf("%s/%d", c.Spec().ID, leg) }

func (s *seqCall) Frame(f *proc.Frame) {
	rec.mu.Lock()
	k := legKey(s.c, f.Header.Leg)
	rec.seqs[k] = append(rec.seqs[k], f.Header.Seq)
	rec.mu.Unlock()
}
func (s *seqCall) Duplicate(h *frame.Header) {
	rec.mu.Lock()
	rec.dups[legKey(s.c, h.Leg)]++
	rec.mu.Unlock()
}
func (s *seqCall) Gap(g proc.Gap) {
	rec.mu.Lock()
	rec.gaps[legKey(s.c, g.Leg)] = append(rec.gaps[legKey(s.c, g.Leg)], g)
	rec.mu.Unlock()
}
func (s *seqCall) Stop(reason string) {
	rec.mu.Lock()
	k := s.c.Spec().ID.String()
	rec.stops[k] = append(rec.stops[k], reason)
	rec.mu.Unlock()
}

func testLogger(t testing.TB) zerolog.Logger {
	if v := os.Getenv("CALLROUTER_TEST_LOG"); v != "" {
		lvl, err := zerolog.ParseLevel(v)
		if err != nil || v == "1" {
			lvl = zerolog.DebugLevel
		}
		return zerolog.New(zerolog.NewTestWriter(t)).Level(lvl)
	}
	return zerolog.Nop()
}

// workerConfig is the production default with fast heartbeats and the recording processor.
func workerConfig() worker.Config {
	wc := worker.DefaultConfig()
	wc.Processors = []string{"accounting", "wtseq"}
	wc.HeartbeatInterval = 100 * time.Millisecond
	wc.FenceAfter = 500 * time.Millisecond
	wc.IdleTimeout = 2 * time.Second
	return wc
}

// startStack runs an embedded nats-server, one router, one ingest node and workers workers
// (worker-1, worker-2, …) with wc; everything stops at the end of the test.
func startStack(t *testing.T, wc worker.Config, workers int) *stack.Stack {
	t.Helper()
	rec.reset()
	rc := router.DefaultConfig()
	rc.HeartbeatInterval = 100 * time.Millisecond
	ic := ingest.DefaultConfig()
	ic.HeartbeatInterval = 100 * time.Millisecond
	ic.DrainTimeout = time.Second
	s, err := stack.Start(stack.Config{Workers: workers, Worker: wc, Router: rc, Ingest: ic, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("stack close: %v", err)
		}
	})
	// The router places on heartbeats it has heard.
	eventually(t, 10*time.Second, "the router to see the workers", func() bool {
		return gauge(t, s.Registry(), "callrouter_router_workers", nil) >= float64(workers)
	})
	return s
}

// eventually polls cond every 20 ms until it holds or d passes.
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

// tone returns a two-leg 8 kHz PCM16 recording of n frames.
func tone(t testing.TB, n int) *filesrc.Recording {
	t.Helper()
	ch := make([][]byte, 2)
	for c := range ch {
		ch[c] = make([]byte, n*160*2)
		for i := 0; i < n*160; i++ {
			v := int16(8000 * math.Sin(2*math.Pi*float64(300*(c+1))*float64(i)/8000))
			binary.LittleEndian.PutUint16(ch[c][2*i:], uint16(v))
		}
	}
	r, err := filesrc.FromAudio(&wav.Audio{Format: wav.FormatPCM, Rate: 8000, BitsPerSample: 16, Channels: ch}, 0)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// play plays calls "<prefix>-0".."<prefix>-<n-1>" of frames frames each at real time and
// waits for them to end at ingest.
func play(t *testing.T, s *stack.Stack, prefix string, n, frames int) {
	t.Helper()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	playNamed(t, s, names, frames)
}

// playNamed plays the named calls concurrently, frames frames each at real time, and waits for
// them to end at ingest.
func playNamed(t *testing.T, s *stack.Stack, names []string, frames int) {
	t.Helper()
	r := tone(t, frames)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = player.Play(ctx, s.Ingest, r, r.Spec("acme", name, nil), frames, 1)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil && !errors.Is(err, ingest.ErrEnded) {
			t.Fatalf("call %s: %v", names[i], err)
		}
	}
}

// complete reports what is wrong with leg k's record if it is not seqs 0..frames-1 exactly once,
// in order, with no gap or duplicate.
func complete(k string, frames int) string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	got := rec.seqs[k]
	ok := len(got) == frames
	for j := 0; ok && j < frames; j++ {
		ok = got[j] == uint32(j)
	}
	if ok && rec.dups[k] == 0 && len(rec.gaps[k]) == 0 {
		return ""
	}
	return fmt.Sprintf("%s: %d frames processed (want %d), %d dups, gaps %v", k, len(got), frames, rec.dups[k], rec.gaps[k])
}

// waitComplete waits until every leg of calls prefix-0..n-1 holds every frame.
func waitComplete(t *testing.T, prefix string, n, frames int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var bad []string
		for i := range n {
			for leg := range 2 {
				if why := complete(fmt.Sprintf("acme/%s-%d/%d", prefix, i, leg), frames); why != "" {
					bad = append(bad, why)
				}
			}
		}
		if len(bad) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("incomplete calls: %v", bad)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// metric sums the counter or gauge values of name whose labels include labels.
func metric(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			if hasLabels(m, labels) {
				total += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return total
}

func gauge(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	return metric(t, reg, name, labels)
}

func hasLabels(m *dto.Metric, labels map[string]string) bool {
	for k, v := range labels {
		found := false
		for _, lp := range m.Label {
			if lp.GetName() == k && lp.GetValue() == v {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// lone is one worker on an embedded nats-server with no router or ingest: the test plays both,
// sending offers and releases and publishing crafted frames.
type lone struct {
	srv *bus.Embedded
	w   *worker.Worker
	nc  *nats.Conn // the test's own connection
	reg *prometheus.Registry
	id  string
}

func startLone(t *testing.T, wc worker.Config) *lone {
	t.Helper()
	rec.reset()
	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	wnc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(wnc.Close)
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if wc.ID == "" {
		wc.ID = "w1"
	}
	wc.DrainTimeout = time.Second // no ingest to migrate to
	reg := prometheus.NewRegistry()
	w, err := worker.New(wc, worker.Deps{NC: wnc, Log: testLogger(t), Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("worker run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("worker did not stop")
		}
	})
	l := &lone{srv: srv, w: w, nc: nc, reg: reg, id: wc.ID}
	// Run has subscribed once its first heartbeat is out.
	hb, err := nc.SubscribeSync(subjects.Heartbeat(subjects.Worker, wc.ID))
	if err != nil {
		t.Fatal(err)
	}
	defer hb.Unsubscribe()
	if _, err := hb.NextMsg(10 * time.Second); err != nil {
		t.Fatalf("no heartbeat: %v", err)
	}
	return l
}

// spec is a two-leg PCMU call.
func spec(call string) session.Spec {
	return session.Spec{ID: session.ID{Tenant: "acme", Call: call}, Legs: []session.Leg{
		{Index: 0, Name: "caller", Codec: frame.CodecPCMU, Rate: 8000},
		{Index: 1, Name: "callee", Codec: frame.CodecPCMU, Rate: 8000}}}
}

// offer sends an offer as a router would and returns the worker's answer.
func (l *lone) offer(t *testing.T, o wire.Offer) wire.OfferReply {
	t.Helper()
	o.V = wire.V
	if o.Pool == "" {
		o.Pool = "default"
	}
	if o.Ingest == "" {
		o.Ingest = "in1"
	}
	data, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	return l.offerRaw(t, data)
}

func (l *lone) offerRaw(t *testing.T, data []byte) wire.OfferReply {
	t.Helper()
	m, err := l.nc.Request(subjects.WorkerVerb(l.id, subjects.WorkerVerbOffer), data, 5*time.Second)
	if err != nil {
		t.Fatalf("offer: %v", err)
	}
	var r wire.OfferReply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		t.Fatalf("offer reply %q: %v", m.Data, err)
	}
	return r
}

// send publishes one live frame of call's leg as ingest would, captured now.
func (l *lone) send(t *testing.T, call string, leg uint8, epoch, seq uint32, flags frame.Flags) {
	t.Helper()
	h := frame.Header{Flags: flags, Codec: frame.CodecPCMU, Leg: leg, SampleRate: 8000, Epoch: epoch, Seq: seq,
		MediaTS: seq * 160, Capture: time.Now().UnixNano(), DurationUS: 20000}
	payload := make([]byte, 160)
	if flags&frame.FlagLast != 0 {
		payload = nil
	}
	buf, err := frame.Append(nil, &h, payload)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.nc.Publish(subjects.Audio("acme", call, spec(call).Legs[leg].Name), buf); err != nil {
		t.Fatal(err)
	}
}
