package proc_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/audio"
	"github.com/callrouter/callrouter/internal/audiohook"
	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/rs/zerolog"
)

// forkRec records, per tenant/call, the frames a worker processed.
var forkRec = struct {
	sync.Mutex
	frames map[string][]proc.Frame
	legs   map[string][]string
	ended  map[string]bool
}{frames: map[string][]proc.Frame{}, legs: map[string][]string{}, ended: map[string]bool{}}

type forkRecProc struct{}
type forkRecCall struct{ id string }

func init() {
	proc.Register("forkrec", func(proc.Options) (proc.Processor, error) { return forkRecProc{}, nil })
}

func (forkRecProc) Start(c proc.Call) (proc.Handler, error) {
	id := c.Spec().Tenant + "/" + c.Spec().Call
	forkRec.Lock()
	for _, l := range c.Spec().Legs {
		forkRec.legs[id] = append(forkRec.legs[id], l.Name)
	}
	forkRec.Unlock()
	return &forkRecCall{id}, nil
}
func (r *forkRecCall) Frame(f *proc.Frame) {
	forkRec.Lock()
	forkRec.frames[r.id] = append(forkRec.frames[r.id], proc.Frame{Header: f.Header, Payload: append([]byte(nil), f.Payload...)})
	forkRec.Unlock()
}
func (r *forkRecCall) Stop(string) {
	forkRec.Lock()
	forkRec.ended[r.id] = true
	forkRec.Unlock()
}

func toneMuLaw(n int, hz float64) [][]byte {
	var frames [][]byte
	b := make([]byte, n)
	for i := range b {
		b[i] = audio.EncodeMuLaw(int16(0.3 * 32767 * math.Sin(2*math.Pi*hz*float64(i)/8000)))
	}
	for i := 0; i+160 <= n; i += 160 {
		frames = append(frames, b[i:i+160])
	}
	return frames
}

// TestForkToAudioHook: a two-leg PCMU call of tenant acme, whose fork target is callrouter's own
// AudioHook server (key of tenant mirror), comes back as an AudioHook call of tenant mirror with
// both legs byte for byte.
func TestForkToAudioHook(t *testing.T) {
	secret := []byte("fork-test-secret-0123456789")
	const key = "Zm9yay10ZXN0LWtleS0x"
	cfg := audiohook.DefaultConfig()
	cfg.Keys = map[string]audiohook.Key{key: {Tenant: "mirror", Secret: secret}}
	ahSrv, err := audiohook.New(cfg, audiohook.Deps{Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	ahSrv.Mount(mux)
	hs := httptest.NewServer(mux)
	defer hs.Close()
	targets := filepath.Join(t.TempDir(), "targets")
	line := "acme ws" + strings.TrimPrefix(hs.URL, "http") + cfg.Path + " " + key + " " + base64.StdEncoding.EncodeToString(secret) + "\n"
	if err := os.WriteFile(targets, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	wc := worker.DefaultConfig()
	wc.Processors = []string{"accounting", "fork", "forkrec"}
	wc.ProcessorOptions = map[string]proc.Options{"fork": {"targets": targets}}
	wc.LagThreshold, wc.MaxFrameAge = time.Minute, time.Minute
	s, err := stack.Start(stack.Config{Worker: wc, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- ahSrv.Run(ctx, s.Ingest) }()
	defer func() { cancel(); <-ran }()
	<-ahSrv.Ready()
	deadline := time.Now().Add(10 * time.Second)
	for len(s.Routers[0].Workers()) != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}

	rec := &filesrc.Recording{Codec: frame.CodecPCMU, Rate: 8000, Frames: [][][]byte{toneMuLaw(8000*3/2, 440), toneMuLaw(8000*3/2, 300)}}
	spec := rec.Spec("acme", "forked-1", nil)
	if _, err := filesrc.Play(context.Background(), s.Ingest, rec, spec, 0, 1); err != nil {
		t.Fatal(err)
	}
	var mirror string
	for time.Now().Before(deadline.Add(20 * time.Second)) {
		forkRec.Lock()
		for id, done := range forkRec.ended {
			if done && strings.HasPrefix(id, "mirror/") {
				mirror = id
			}
		}
		forkRec.Unlock()
		if mirror != "" {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if mirror == "" {
		t.Fatal("no forked call arrived through AudioHook")
	}
	forkRec.Lock()
	legs, frames := forkRec.legs[mirror], forkRec.frames[mirror]
	forkRec.Unlock()
	if strings.Join(legs, ",") != strings.Join([]string{spec.Legs[0].Name, spec.Legs[1].Name}, ",") {
		t.Fatalf("mirror legs %v, source legs %+v", legs, spec.Legs)
	}
	var got [2][]byte
	for _, f := range frames {
		if !f.Header.Has(frame.FlagLast) {
			got[f.Header.Leg] = append(got[f.Header.Leg], f.Payload...)
		}
	}
	for leg := range 2 {
		want := bytes.Join(rec.Frames[leg], nil)
		if !bytes.Equal(got[leg], want) {
			t.Fatalf("leg %d: %d bytes forked, want %d identical", leg, len(got[leg]), len(want))
		}
	}
}
