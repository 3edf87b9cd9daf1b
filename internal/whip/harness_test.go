package whip

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/wav"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/pion/ice/v4"
	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media"
	"github.com/rs/zerolog"
)

// The "whiptest" processor records, per call, every frame a worker processed.
type gotFrame struct {
	h       frame.Header
	payload []byte
	at      time.Time
}

type frameLog struct {
	mu    sync.Mutex
	calls map[string][]gotFrame // call id → frames in processing order
	gaps  map[string][]proc.Gap
}

var processed = &frameLog{calls: map[string][]gotFrame{}, gaps: map[string][]proc.Gap{}}

func (l *frameLog) frames(call string) []gotFrame {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]gotFrame(nil), l.calls[call]...)
}

func (l *frameLog) total() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, f := range l.calls {
		n += len(f)
	}
	return n
}

func (l *frameLog) gapsOf(call string) []proc.Gap {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]proc.Gap(nil), l.gaps[call]...)
}

type recProc struct{}
type recCall struct{ id string }

func init() {
	proc.Register("whiptest", func(proc.Options) (proc.Processor, error) { return recProc{}, nil })
}

func (recProc) Start(c proc.Call) (proc.Handler, error) { return &recCall{c.Spec().Call}, nil }
func (r *recCall) Frame(f *proc.Frame) {
	processed.mu.Lock()
	processed.calls[r.id] = append(processed.calls[r.id], gotFrame{f.Header, append([]byte(nil), f.Payload...), time.Now()})
	processed.mu.Unlock()
}
func (r *recCall) Gap(g proc.Gap) {
	processed.mu.Lock()
	processed.gaps[r.id] = append(processed.gaps[r.id], g)
	processed.mu.Unlock()
}
func (r *recCall) Stop(string) {}

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
		time.Sleep(10 * time.Millisecond)
	}
}

// env is a running callrouter with the WHIP endpoint on an HTTP test server.
type env struct {
	stack *stack.Stack
	whip  *Server
	http  *httptest.Server
	url   string // the endpoint URL
	// stopWhip ends the WHIP server's Run (as SIGTERM does) and returns its error once it has
	// returned; the stack keeps running. Safe to call more than once.
	stopWhip func() error
}

const (
	tokenAcme   = "acme-token-0123456789"
	tokenGlobex = "globex-token-0123456789"
)

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.UDPAddr = "127.0.0.1:0"
	cfg.Tokens = map[string]string{tokenAcme: "acme", tokenGlobex: "globex"}
	cfg.Linger = 5 * time.Second
	return cfg
}

func startEnv(t testing.TB, workers int, cfg Config) *env {
	t.Helper()
	return startEnvCapacity(t, workers, 500, cfg)
}

func startEnvCapacity(t testing.TB, workers, capacity int, cfg Config) *env {
	t.Helper()
	wc := worker.DefaultConfig()
	wc.Processors = []string{"accounting", "whiptest"}
	wc.Capacity = capacity
	// These tests check that every frame of every call arrives, on a shared 2-core machine that
	// the race detector and other packages' tests load: a worker's overload protection (no
	// offers past -lag-threshold, stale-frame drops) would rightly refuse or drop there, and is
	// covered by internal/stack's tests.
	wc.LagThreshold = time.Minute
	wc.MaxFrameAge = time.Minute
	s, err := stack.Start(stack.Config{Workers: workers, Worker: wc, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	w, err := New(cfg, Deps{Log: testLogger(t), Registry: s.Registry()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	runDone := make(chan struct{})
	go func() { errc <- w.Run(ctx, s.Ingest); close(runDone) }()
	mux := http.NewServeMux()
	w.Mount(mux)
	hs := httptest.NewServer(mux)
	stopWhip := sync.OnceValue(func() error {
		cancel()
		return <-errc
	})
	e := &env{stack: s, whip: w, http: hs, url: hs.URL + cfg.Path, stopWhip: stopWhip}
	t.Cleanup(func() {
		hs.Close()
		if err := stopWhip(); err != nil {
			t.Errorf("whip Run: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Logf("stack close: %v", err)
		}
	})
	select {
	case <-w.Ready():
	case <-runDone:
		t.Fatal("whip Run returned before it was ready") // the cleanup reports its error
	}
	eventually(t, 10*time.Second, "workers visible to the router", func() bool { return len(s.Routers[0].Workers()) == workers })
	return e
}

// client is a pion WHIP client.
type client struct {
	pc       *webrtc.PeerConnection
	track    *webrtc.TrackLocalStaticSample
	location string
	answer   string // the SDP answer
	call     string
	token    string
	hc       *http.Client
	posted   time.Time // POST sent
	answered time.Time // 201 received
}

var clientCodecs = map[string]webrtc.RTPCodecCapability{
	"opus": {MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2, SDPFmtpLine: "minptime=10;useinbandfec=1"},
	"pcmu": {MimeType: webrtc.MimeTypePCMU, ClockRate: 8000},
	"pcma": {MimeType: webrtc.MimeTypePCMA, ClockRate: 8000},
}

// unpluggable is a UDP socket that can be cut off, as when a client loses its network: after
// unplug, nothing is sent or received.
type unpluggable struct {
	net.PacketConn
	cut atomic.Bool
}

func (u *unpluggable) WriteTo(b []byte, addr net.Addr) (int, error) {
	if u.cut.Load() {
		return len(b), nil
	}
	return u.PacketConn.WriteTo(b, addr)
}

func (u *unpluggable) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		n, addr, err := u.PacketConn.ReadFrom(b)
		if err != nil || !u.cut.Load() {
			return n, addr, err
		}
	}
}

func newClientPC(codec string) (*webrtc.PeerConnection, *webrtc.TrackLocalStaticSample, error) {
	return newClientPCOn(codec, nil)
}

// newClientPCOn builds a client peer connection; with conn, all its ICE traffic uses conn.
func newClientPCOn(codec string, conn net.PacketConn) (*webrtc.PeerConnection, *webrtc.TrackLocalStaticSample, error) {
	var me webrtc.MediaEngine
	pts := map[string]webrtc.PayloadType{"opus": 111, "pcmu": 0, "pcma": 8}
	if err := me.RegisterCodec(webrtc.RTPCodecParameters{RTPCodecCapability: clientCodecs[codec], PayloadType: pts[codec]}, webrtc.RTPCodecTypeAudio); err != nil {
		return nil, nil, err
	}
	var se webrtc.SettingEngine
	se.SetIncludeLoopbackCandidate(true)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetIPFilter(func(ip net.IP) bool { return ip.IsLoopback() })
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	if conn != nil {
		se.SetICEUDPMux(webrtc.NewICEUDPMux(nil, conn))
	}
	api := webrtc.NewAPI(webrtc.WithMediaEngine(&me), webrtc.WithSettingEngine(se))
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, nil, err
	}
	track, err := webrtc.NewTrackLocalStaticSample(clientCodecs[codec], "audio", "whip-test")
	if err != nil {
		_ = pc.Close()
		return nil, nil, err
	}
	if _, err := pc.AddTransceiverFromTrack(track, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
		_ = pc.Close()
		return nil, nil, err
	}
	return pc, track, nil
}

// httpError is a non-201 answer to a POST.
type httpError struct {
	code       int
	body       string
	retryAfter string
}

func (e *httpError) Error() string {
	return fmt.Sprintf("HTTP %d: %s", e.code, strings.TrimSpace(e.body))
}

// dial offers audio in codec to the endpoint and waits until the connection is up.
func dial(ctx context.Context, endpoint, token, codec string) (*client, error) {
	return dialOn(ctx, endpoint, token, codec, nil)
}

// dialOn is dial with the client's ICE traffic on conn (nil: sockets of its own).
func dialOn(ctx context.Context, endpoint, token, codec string, conn net.PacketConn) (*client, error) {
	pc, track, err := newClientPCOn(codec, conn)
	if err != nil {
		return nil, err
	}
	return dialPC(ctx, endpoint, token, pc, track, nil)
}

// dialPC offers pc's offer, changed by edit if not nil, to the endpoint and waits until the
// connection is up.
func dialPC(ctx context.Context, endpoint, token string, pc *webrtc.PeerConnection, track *webrtc.TrackLocalStaticSample, edit func(string) string) (*client, error) {
	c := &client{pc: pc, track: track, token: token, hc: clientOf(ctx)}
	connected := make(chan struct{})
	var once sync.Once
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		if s == webrtc.PeerConnectionStateConnected {
			once.Do(func() { close(connected) })
		}
	})
	offer, err := pc.CreateOffer(nil)
	if err == nil {
		gathered := webrtc_gathered(pc)
		if err = pc.SetLocalDescription(offer); err == nil {
			<-gathered
		}
	}
	if err != nil {
		_ = pc.Close()
		return nil, err
	}
	c.posted = time.Now()
	sdp := pc.LocalDescription().SDP
	if edit != nil {
		sdp = edit(sdp)
	}
	res, err := post(ctx, endpoint, token, "application/sdp", sdp)
	if err != nil {
		_ = pc.Close()
		return nil, err
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	c.answered = time.Now()
	if res.StatusCode != http.StatusCreated {
		_ = pc.Close()
		return nil, &httpError{res.StatusCode, string(body), res.Header.Get("Retry-After")}
	}
	loc, err := res.Request.URL.Parse(res.Header.Get("Location"))
	if err != nil {
		_ = pc.Close()
		return nil, err
	}
	c.location, c.call, c.answer = loc.String(), res.Header.Get(HeaderCall), string(body)
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: string(body)}); err != nil {
		_ = pc.Close()
		return nil, err
	}
	select {
	case <-connected:
		return c, nil
	case <-ctx.Done():
		_ = pc.Close()
		return nil, fmt.Errorf("not connected: %w", ctx.Err())
	}
}

func post(ctx context.Context, url, token, ctype, body string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", ctype)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return clientOf(ctx).Do(req)
}

type clientKey struct{}

// withClient makes the helpers that take ctx (dial, post, getEvents) use hc, e.g. an HTTPS
// client trusting a test CA; they use http.DefaultClient otherwise.
func withClient(ctx context.Context, hc *http.Client) context.Context {
	return context.WithValue(ctx, clientKey{}, hc)
}

func clientOf(ctx context.Context) *http.Client {
	if hc, ok := ctx.Value(clientKey{}).(*http.Client); ok {
		return hc
	}
	return http.DefaultClient
}

// send plays payloads at 20 ms intervals.
func (c *client) send(ctx context.Context, payloads [][]byte) error {
	samples := make([]media.Sample, len(payloads))
	for i, p := range payloads {
		samples[i] = media.Sample{Data: p, Duration: frame.Duration}
	}
	return c.sendSamples(ctx, samples)
}

// sendSamples plays samples at 20 ms intervals (a sample's Duration sets the next packet's
// timestamp; PrevDroppedPackets skips sequence numbers as if packets were lost).
func (c *client) sendSamples(ctx context.Context, samples []media.Sample) error {
	t := time.NewTicker(frame.Duration)
	defer t.Stop()
	for _, s := range samples {
		if err := c.track.WriteSample(s); err != nil {
			return err
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// hangup DELETEs the session and closes the peer connection.
func (c *client) hangup() (int, error) {
	defer c.pc.Close()
	req, _ := http.NewRequest(http.MethodDelete, c.location, nil)
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	res, err := c.hc.Do(req)
	if err != nil {
		return 0, err
	}
	res.Body.Close()
	return res.StatusCode, nil
}

// oggOpusPackets returns the Opus packets of an Ogg Opus file, without the two header packets.
func oggOpusPackets(t testing.TB, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var packets [][]byte
	var cur []byte
	for len(b) >= 27 {
		if string(b[:4]) != "OggS" {
			t.Fatalf("%s: bad ogg page", path)
		}
		nseg := int(b[26])
		lacing := b[27 : 27+nseg]
		data := b[27+nseg:]
		for _, l := range lacing {
			cur = append(cur, data[:l]...)
			data = data[l:]
			if l < 255 {
				packets = append(packets, cur)
				cur = nil
			}
		}
		b = data
	}
	if len(packets) < 3 || !bytes.HasPrefix(packets[0], []byte("OpusHead")) {
		t.Fatalf("%s: not an Ogg Opus file", path)
	}
	return packets[2:]
}

// pcmuFrames returns the 20 ms frames of a μ-law WAV file (the last partial frame dropped).
func pcmuFrames(t testing.TB, path string) [][]byte {
	t.Helper()
	a, err := wav.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if a.Format != wav.FormatMuLaw || a.Rate != 8000 {
		t.Fatalf("%s: want 8 kHz μ-law", path)
	}
	var out [][]byte
	ch := a.Channels[0]
	for off := 0; off+160 <= len(ch); off += 160 {
		out = append(out, ch[off:off+160])
	}
	return out
}

// ulaw decodes one G.711 μ-law sample (ITU-T G.711).
func ulaw(b byte) int16 {
	b = ^b
	t := (int16(b&0x0f) << 3) + 0x84
	t <<= (b & 0x70) >> 4
	if b&0x80 != 0 {
		return 0x84 - t
	}
	return t - 0x84
}

// rms returns the root mean square level of μ-law samples.
func rms(p []byte) float64 {
	var sum float64
	for _, b := range p {
		v := float64(ulaw(b))
		sum += v * v
	}
	if len(p) == 0 {
		return 0
	}
	return math.Sqrt(sum / float64(len(p)))
}

func webrtc_gathered(pc *webrtc.PeerConnection) <-chan struct{} {
	return webrtc.GatheringCompletePromise(pc)
}
