package proc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/player"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/coder/websocket"
	"github.com/rs/zerolog"
)

// downReceiver is an AudioHook server that drops its first connection after two binary
// messages and answers 503 to upgrades until up is closed. It keeps each session's text messages
// and audio in order.
type downReceiver struct {
	up       chan struct{}
	mu       sync.Mutex
	conns    int
	refused  int
	sessions [][]downMsg
}

type downMsg struct {
	Type     string          `json:"type"`
	Position string          `json:"position"`
	Params   json.RawMessage `json:"parameters"`
	audio    []byte
}

func (r *downReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	n := r.conns
	r.conns++
	select {
	case <-r.up:
	default:
		if n > 0 {
			r.refused++
			r.mu.Unlock()
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
	}
	idx := len(r.sessions)
	r.sessions = append(r.sessions, nil)
	r.mu.Unlock()
	c, err := websocket.Accept(w, req, nil)
	if err != nil {
		return
	}
	defer c.CloseNow()
	audio := 0
	for {
		typ, b, err := c.Read(req.Context())
		if err != nil {
			return
		}
		m := downMsg{Type: "audio", audio: b}
		if typ == websocket.MessageText {
			m = downMsg{}
			_ = json.Unmarshal(b, &m)
		}
		r.mu.Lock()
		r.sessions[idx] = append(r.sessions[idx], m)
		r.mu.Unlock()
		reply := ""
		switch m.Type {
		case "audio":
			if audio++; n == 0 && audio == 2 {
				return
			}
		case "open":
			var p struct {
				Media []any `json:"media"`
			}
			_ = json.Unmarshal(m.Params, &p)
			b, _ := json.Marshal(map[string]any{"media": p.Media[:1]})
			reply = `{"version":"2","type":"opened","id":"x","seq":1,"clientseq":1,"parameters":` + string(b) + `}`
		case "close":
			reply = `{"version":"2","type":"closed","id":"x","seq":2,"clientseq":1,"parameters":{}}`
		}
		if reply != "" {
			_ = c.Write(req.Context(), websocket.MessageText, []byte(reply))
		}
		if m.Type == "close" {
			return
		}
	}
}

func (r *downReceiver) snapshot() ([][]downMsg, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out [][]downMsg
	for _, s := range r.sessions {
		out = append(out, append([]downMsg(nil), s...))
	}
	return out, r.refused
}

// TestForkReconnectWhileCallGoesOn: a worker forks a call whose receiver drops the connection
// 400 ms in and refuses upgrades until the call has ended. The call's other processors get every
// frame meanwhile (the fork never holds up the call's goroutine); once the receiver is back the
// fork resumes with continuedSessions, and the two sessions laid at their positions are the call
// byte for byte, nothing discarded.
func TestForkReconnectWhileCallGoesOn(t *testing.T) {
	r := &downReceiver{up: make(chan struct{})}
	hs := httptest.NewServer(r)
	defer hs.Close()
	targets := filepath.Join(t.TempDir(), "targets")
	if err := os.WriteFile(targets, []byte("acme ws"+strings.TrimPrefix(hs.URL, "http")+"/ah key -\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	wc := worker.DefaultConfig()
	wc.Processors = []string{"accounting", "fork", "forkrec"}
	wc.ProcessorOptions = map[string]proc.Options{"fork": {"targets": targets, "reconnect_attempts": "1000",
		"reconnect_backoff": "20ms", "reconnect_backoff_max": "100ms"}}
	wc.LagThreshold, wc.MaxFrameAge = time.Minute, time.Minute
	s, err := stack.Start(stack.Config{Worker: wc, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	deadline := time.Now().Add(30 * time.Second)
	for len(s.Routers[0].Workers()) != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	const n = 100 // frames a leg: 2 s
	rec := &filesrc.Recording{Codec: frame.CodecPCMU, Rate: 8000, Frames: [][][]byte{toneMuLaw(160*n, 440), toneMuLaw(160*n, 300)}}
	spec := rec.Spec("acme", "fork-down", nil)
	if _, err := player.Play(context.Background(), s.Ingest, rec, spec, 0, 1); err != nil {
		t.Fatal(err)
	}
	id := "acme/fork-down"
	for {
		forkRec.Lock()
		ended, got := forkRec.ended[id], len(forkRec.frames[id])
		forkRec.Unlock()
		if ended {
			if got < 2*n {
				t.Fatalf("the other processor got %d frames, want %d", got, 2*n)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the call did not end at the worker")
		}
		time.Sleep(10 * time.Millisecond)
	}
	sessions, refused := r.snapshot()
	if len(sessions) != 1 || refused == 0 {
		t.Fatalf("while the call ran: %d sessions, %d upgrades refused; want the receiver down", len(sessions), refused)
	}
	close(r.up)
	for {
		sessions, _ = r.snapshot()
		if len(sessions) == 2 && len(sessions[1]) > 0 && sessions[1][len(sessions[1])-1].Type == "close" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fork did not resume and close (%d sessions)", len(sessions))
		}
		time.Sleep(10 * time.Millisecond)
	}
	var p struct {
		Continued []struct {
			ID string `json:"id"`
		} `json:"continuedSessions"`
	}
	_ = json.Unmarshal(sessions[1][0].Params, &p)
	if len(p.Continued) != 1 {
		t.Fatalf("second open %s", sessions[1][0].Params)
	}
	var got [2][]byte
	got[0], got[1] = make([]byte, 160*n), make([]byte, 160*n)
	for si, msgs := range sessions {
		pos := 0
		for _, m := range msgs {
			switch m.Type {
			case "open":
				pos = refSamples(t, m.Position)
			case "discarded":
				t.Fatalf("session %d discarded %s", si, m.Params)
			case "audio":
				for i := 0; i+1 < len(m.audio); i += 2 {
					got[0][pos], got[1][pos] = m.audio[i], m.audio[i+1]
					pos++
				}
			}
		}
	}
	for leg := range 2 {
		if want := bytes.Join(rec.Frames[leg], nil); !bytes.Equal(got[leg], want) {
			t.Fatalf("leg %d: the two sessions are not the call", leg)
		}
	}
}
