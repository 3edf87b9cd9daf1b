package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/peertest"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/wav"
	"github.com/callrouter/callrouter/internal/whip"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4/pkg/media/oggwriter"
	"github.com/rs/zerolog"
)

// innerEnv marks the test process that runs inside the private network namespace.
const innerEnv = "CALLROUTER_E2E_NETNS"

// TestBrowserCall re-runs itself inside `unshare -n` (loopback only) where it starts a
// one-process callrouter with the WHIP endpoint and the call page on a public HTTPS listener (a
// test CA's certificate) and drives Chromium through a call: the page must get the microphone
// over HTTPS and not over plain HTTP at a non-loopback name, and send its token only as a
// header. It skips only when chromium or node is not installed.
func TestBrowserCall(t *testing.T) {
	if os.Getenv(innerEnv) != "" {
		browserCall(t)
		return
	}
	chromium, errC := exec.LookPath("chromium")
	node, errN := exec.LookPath("node")
	if errC != nil || errN != nil {
		peertest.Missing(t, fmt.Sprintf("the browser test needs chromium (%v) and node (%v): apt-get install chromium nodejs npm", errC, errN))
	}
	if _, err := os.Stat("node_modules/playwright-core"); err != nil {
		npm, err := exec.LookPath("npm")
		if err != nil {
			t.Fatalf("playwright-core is not installed and npm is missing: run `npm ci --prefix internal/whip/e2e`")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if out, err := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund").CombinedOutput(); err != nil {
			t.Fatalf("npm ci (playwright-core): %v\n%s", err, out)
		}
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
	shot := artifactPath(t, "whip-call-page.png")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "-n", "sh", "-c", `ip link set lo up && exec "$0" -test.run '^TestBrowserCall$' -test.v -test.count=1`, self)
	cmd.Env = append(os.Environ(), innerEnv+"=1", "CALLROUTER_E2E_SHOT="+shot, "CHROMIUM="+chromium, "NODE="+node)
	out, err := cmd.CombinedOutput()
	t.Logf("inside unshare -n:\n%s", out)
	if err != nil {
		t.Fatalf("browser call inside the private network namespace failed: %v", err)
	}
	if !bytes.Contains(out, []byte("--- PASS: TestBrowserCall")) {
		t.Fatal("the inner test did not pass")
	}
	t.Logf("screenshot: %s", shot)
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
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p, _ := filepath.Abs(filepath.Join(dir, name))
	return p
}

type pageReport struct {
	State  string `json:"state"`
	Call   string `json:"call"`
	Codec  string `json:"codec"`
	Events []struct {
		Kind, Source, Text string
	} `json:"events"`
	PacketsSent int    `json:"packetsSent"`
	PageURL     string `json:"pageURL"`
	Insecure    *struct {
		SecureContext bool `json:"secureContext"`
		MediaDevices  bool `json:"mediaDevices"`
	} `json:"insecure"`
}

// The "e2erec" processor keeps, per call, the frames a worker processed.
var (
	recMu  sync.Mutex
	frames = map[string][]proc.Frame{}
)

type recProc struct{}
type recCall struct{ id string }

func init() {
	proc.Register("e2erec", func(proc.Options) (proc.Processor, error) { return recProc{}, nil })
}

func (recProc) Start(c proc.Call) (proc.Handler, error) { return &recCall{c.Spec().Call}, nil }
func (r *recCall) Frame(f *proc.Frame) {
	recMu.Lock()
	frames[r.id] = append(frames[r.id], proc.Frame{Header: f.Header, Payload: append([]byte(nil), f.Payload...)})
	recMu.Unlock()
}
func (r *recCall) Stop(string) {}

// serveWHIP runs a WHIP endpoint for the stack's ingest node.
func serveWHIP(t *testing.T, s *stack.Stack, cfg whip.Config, log zerolog.Logger) (*whip.Server, func()) {
	w, err := whip.New(cfg, whip.Deps{Log: log}) // a registry of its own: two endpoints run here
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- w.Run(ctx, s.Ingest) }()
	<-w.Ready()
	return w, func() {
		cancel()
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
}

// The page is opened at this host name, mapped to 127.0.0.1 in Chromium: not localhost, so the
// browser grants the microphone only over HTTPS.
const pageHost = "ingest.test"

// seen is one request the public listener served, as the browser sent it.
type seen struct {
	method, url, auth, referer string
}

type requestLog struct {
	mu   sync.Mutex
	reqs []seen
}

func (l *requestLog) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		l.reqs = append(l.reqs, seen{r.Method, r.URL.String(), r.Header.Get("Authorization"), r.Header.Get("Referer")})
		l.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

func (l *requestLog) all() []seen {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]seen(nil), l.reqs...)
}

func browserCall(t *testing.T) {
	if ifs, _ := net.Interfaces(); len(ifs) != 1 || ifs[0].Flags&net.FlagLoopback == 0 {
		t.Fatalf("not in a loopback-only network namespace: %v", ifs)
	}
	log := zerolog.Nop()
	if os.Getenv("CALLROUTER_TEST_LOG") != "" {
		log = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
	}
	wc := worker.DefaultConfig()
	wc.Processors = []string{"accounting", "e2erec"}
	s, err := stack.Start(stack.Config{Workers: 1, Worker: wc, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Two endpoints: /whip prefers Opus (what browsers send by default), /whip-g711 prefers PCMU.
	// A token is required (no open tenant): the page must send it, as a header.
	const token, urlToken = "e2e-browser-token-0123456789", "token-in-the-url-0123456789"
	cfg := whip.DefaultConfig()
	cfg.UDPAddr = "127.0.0.1:0"
	cfg.Tokens = map[string]string{token: "acme"}
	w1, stop1 := serveWHIP(t, s, cfg, log)
	defer stop1()
	cfg.Path, cfg.Codecs = "/whip-g711", []string{"pcmu", "pcma", "opus"}
	w2, stop2 := serveWHIP(t, s, cfg, log)
	defer stop2()
	mux := http.NewServeMux()
	mux.Handle("/", w1.PublicHandler())
	w2.Mount(mux)
	var reqs requestLog
	// The public listener over HTTPS with a certificate of a CA made here, as cmd/ingest serves it
	// with -whip-tls-cert and -whip-tls-key; and the same over plain HTTP, which the browser
	// must refuse the microphone.
	lc := whip.DefaultListenConfig()
	lc.Addr = "127.0.0.1:0"
	lc.CertFile, lc.KeyFile = writeTestCert(t, t.TempDir(), pageHost)
	pub, err := whip.ListenPublic(lc, reqs.wrap(mux), log)
	if err != nil {
		t.Fatal(err)
	}
	plainCfg := whip.DefaultListenConfig()
	plainCfg.Addr = "127.0.0.1:0"
	plain, err := whip.ListenPublic(plainCfg, mux, log)
	if err != nil {
		t.Fatal(err)
	}
	pctx, pstop := context.WithCancel(context.Background())
	var served sync.WaitGroup
	served.Add(2)
	go func() { defer served.Done(); _ = pub.Run(pctx) }()
	go func() { defer served.Done(); _ = plain.Run(pctx) }()
	defer func() { pstop(); served.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for len(s.Routers[0].Workers()) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	_, pubPort, _ := net.SplitHostPort(pub.Addr())
	_, plainPort, _ := net.SplitHostPort(plain.Addr())
	base := "https://" + net.JoinHostPort(pageHost, pubPort) + "/call/?token=" + urlToken
	env := []string{"TOKEN=" + token, "HOST_RULES=MAP " + pageHost + " 127.0.0.1",
		"INSECURE_URL=http://" + net.JoinHostPort(pageHost, plainPort) + "/call/"}
	shot := os.Getenv("CALLROUTER_E2E_SHOT")
	for _, tc := range []struct {
		name, query, shot string
		codec             frame.Codec
	}{
		{"opus", "", shot, frame.CodecOpus},
		{"pcmu", "&whip=/whip-g711", strings.TrimSuffix(shot, ".png") + "-pcmu.png", frame.CodecPCMU},
	} {
		rep := placeCall(t, base+tc.query, tc.shot, env)
		if rep.Insecure == nil || rep.Insecure.SecureContext || rep.Insecure.MediaDevices {
			t.Errorf("%s: the page over plain http at %s: %+v; want no secure context and no microphone API", tc.name, pageHost, rep.Insecure)
		}
		if strings.Contains(rep.PageURL, "token") {
			t.Errorf("%s: the page's address still holds a token: %s", tc.name, rep.PageURL)
		}
		recMu.Lock()
		got := frames[rep.Call]
		recMu.Unlock()
		if len(got) < 100 {
			t.Fatalf("%s: the worker processed %d frames of call %q", tc.name, len(got), rep.Call)
		}
		for i, f := range got {
			if f.Header.Seq != uint32(i) || f.Header.Codec != tc.codec {
				t.Fatalf("%s: frame %d: %+v", tc.name, i, f.Header)
			}
		}
		checkSpeech(t, tc.name, levels(t, tc.codec, got))
		t.Logf("%s: page codec %q at %s; %d frames in order at the worker; screenshot %s", tc.name, rep.Codec, rep.PageURL, len(got), tc.shot)
	}
	// Every request of the page's calls: the token only ever in the Authorization header.
	kinds := map[string]int{}
	for _, r := range reqs.all() {
		if strings.Contains(r.url, token) || strings.Contains(r.referer, token) || strings.Contains(r.url, urlToken) && !strings.HasPrefix(r.url, "/call/?") {
			t.Errorf("%s %s (Referer %q): a token in a URL", r.method, r.url, r.referer)
		}
		if !strings.HasPrefix(r.url, "/whip") {
			continue
		}
		kind := r.method
		if strings.HasSuffix(r.url, "/events") {
			kind = "events"
		}
		kinds[kind]++
		if r.auth != "Bearer "+token {
			t.Errorf("%s %s: Authorization %q; want the token typed into the page", r.method, r.url, r.auth)
		}
	}
	if kinds["POST"] != 2 || kinds["DELETE"] != 2 || kinds["events"] < 2 {
		t.Errorf("WHIP requests of the page: %v; want 2 POSTs, 2 DELETEs, an event stream per call", kinds)
	}
}

// writeTestCert writes a CA-signed certificate for host and 127.0.0.1 and its key into dir.
func writeTestCert(t *testing.T, dir, host string) (certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "callrouter e2e CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, DNSNames: []string{host}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})...)
	if err := os.WriteFile(certFile, chain, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// levels returns the level of each 20 ms of a call's frames, decoded: μ-law here, Opus with
// libopus's opusdec (opus-tools); nil when opusdec is missing.
func levels(t *testing.T, codec frame.Codec, got []proc.Frame) []float64 {
	var out []float64
	if codec == frame.CodecPCMU {
		for _, f := range got {
			var sum float64
			for _, b := range f.Payload {
				v := float64(ulaw(b))
				sum += v * v
			}
			out = append(out, math.Sqrt(sum/float64(max(1, len(f.Payload)))))
		}
		return out
	}
	dec, err := exec.LookPath("opusdec")
	if err != nil {
		t.Log("opusdec (opus-tools) not installed: Opus from Chromium checked for order only")
		return nil
	}
	dir := t.TempDir()
	in, wavOut := filepath.Join(dir, "in.opus"), filepath.Join(dir, "out.wav")
	w, err := oggwriter.New(in, 48000, 2)
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range got {
		if err := w.WriteRTP(&rtp.Packet{Header: rtp.Header{SequenceNumber: uint16(i), Timestamp: uint32(i * 960)}, Payload: f.Payload}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command(dec, "--quiet", "--rate", "48000", in, wavOut).CombinedOutput(); err != nil {
		t.Fatalf("opusdec: %v\n%s", err, b)
	}
	a, err := wav.ReadFile(wavOut)
	if err != nil {
		t.Fatal(err)
	}
	pcm := a.Channels[0]
	for off := 0; off+960*2 <= len(pcm); off += 960 * 2 {
		var sum float64
		for i := 0; i < 960; i++ {
			v := float64(int16(binary.LittleEndian.Uint16(pcm[off+2*i:])))
			sum += v * v
		}
		out = append(out, math.Sqrt(sum/960))
	}
	return out
}

// checkSpeech checks that Chromium's fake microphone (a looped recording of speech) reached the
// worker as speech: a good part of the decoded 20 ms frames are well above silence.
func checkSpeech(t *testing.T, name string, lv []float64) {
	if lv == nil {
		return
	}
	loud, peak := 0, 0.0
	for _, l := range lv {
		peak = max(peak, l)
		if l > 500 {
			loud++
		}
	}
	if loud < len(lv)/5 || peak < 2000 {
		t.Errorf("%s from Chromium, decoded: %d of %d frames above silence, peak level %.0f", name, loud, len(lv), peak)
	}
	t.Logf("%s from Chromium, decoded: %d of %d frames above silence, peak level %.0f", name, loud, len(lv), peak)
}

// ulaw decodes one G.711 μ-law sample.
func ulaw(b byte) int16 {
	b = ^b
	t := (int16(b&0x0f) << 3) + 0x84
	t <<= (b & 0x70) >> 4
	if b&0x80 != 0 {
		return 0x84 - t
	}
	return t - 0x84
}

// placeCall drives the call page through one call and checks what the page shows.
func placeCall(t *testing.T, pageURL, shot string, env []string) pageReport {
	wavPath, _ := filepath.Abs("../testdata/speech-16k.wav")
	nctx, ncancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer ncancel()
	node := os.Getenv("NODE")
	if node == "" {
		node = "node"
	}
	cmd := exec.CommandContext(nctx, node, "call.mjs", pageURL, wavPath, shot, "3000")
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("call.mjs: %v\n%s", err, stderr.String())
	}
	var rep pageReport
	if err := json.Unmarshal(bytes.TrimSpace(out), &rep); err != nil {
		t.Fatalf("call.mjs output %q: %v", out, err)
	}
	kinds := map[string]string{}
	for _, e := range rep.Events {
		kinds[e.Kind] = e.Text
		t.Logf("page event %-10s %s", e.Kind, e.Text)
	}
	for _, k := range []string{"start", "state", "end", "accounting", "media"} {
		if _, ok := kinds[k]; !ok {
			t.Errorf("the page shows no %q event", k)
		}
	}
	acc := kinds["accounting"]
	if !strings.Contains(acc, "worker/") || strings.Contains(acc, `"processed":0`) || !strings.Contains(acc, `"lost":0`) {
		t.Errorf("accounting event on the page: %s", acc)
	}
	if rep.PacketsSent < 100 || !strings.HasPrefix(rep.State, "ended") {
		t.Errorf("page state %q, %d packets sent", rep.State, rep.PacketsSent)
	}
	if _, err := os.Stat(shot); err != nil {
		t.Errorf("screenshot: %v", err)
	}
	return rep
}
