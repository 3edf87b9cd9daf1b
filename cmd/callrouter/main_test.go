package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/callrouter/callrouter/internal/obs"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/wire"
)

// TestOneProcessModePlaysTheSample runs the README's first command (faster than real time) and
// checks that every frame of both legs of every call was processed.
func TestOneProcessModePlaysTheSample(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"-calls", "3", "-speed", "8", "-http", "127.0.0.1:0", "-whip-udp", "127.0.0.1:0", "-whip-listen", "127.0.0.1:0", "-record-dir", t.TempDir(), "-json", "-log-level", "error"}, &out); code != 0 {
		t.Fatalf("exit %d\n%s", code, out.String())
	}
	accounted := 0
	for _, line := range strings.Split(out.String(), "\n") {
		var ev wire.Event
		if json.Unmarshal([]byte(line), &ev) != nil || ev.Kind != "accounting" {
			continue
		}
		var a proc.Accounting
		if err := json.Unmarshal(ev.Data, &a); err != nil {
			t.Fatal(err)
		}
		for _, l := range a.Legs {
			if l.Lost != 0 || l.Duplicates != 0 || l.Processed != 354 {
				t.Errorf("%s leg %s: %+v", ev.Call, l.Name, l)
			}
		}
		accounted++
	}
	for _, kind := range []string{"speech", "levels", "recording", "summary"} {
		if !strings.Contains(out.String(), `"kind":"`+kind+`"`) {
			t.Errorf("no %s event from the processors", kind)
		}
	}
	if accounted != 3 {
		t.Errorf("%d accounting events, want 3\n%s", accounted, out.String())
	}
}

// TestMetricsNotOnThePublicListener: while the one-process mode plays a call, the call page and
// WHIP answer on -whip-listen and /metrics, /healthz, /readyz only on -http.
func TestMetricsNotOnThePublicListener(t *testing.T) {
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		defer pw.Close()
		done <- run([]string{"-calls", "1", "-speed", "2", "-http", "127.0.0.1:0", "-whip-udp", "127.0.0.1:0", "-whip-listen", "127.0.0.1:0",
			"-record-dir", t.TempDir(), "-json", "-log-level", "error"}, pw)
	}()
	defer func() {
		go func() { _, _ = io.Copy(io.Discard, pr) }()
		if code := <-done; code != 0 {
			t.Errorf("exit %d", code)
		}
	}()
	first, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`metrics http://(\S+)/metrics, call page (\S+)/call/`).FindStringSubmatch(first)
	if m == nil {
		t.Fatalf("first line %q names no addresses", first)
	}
	private, public := "http://"+m[1], m[2]
	status := func(url string) int {
		res, err := http.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	for _, p := range obs.Paths() {
		if code := status(public + p); code != http.StatusNotFound {
			t.Errorf("public %s: %d, want 404", p, code)
		}
		if code := status(private + p); code != http.StatusOK {
			t.Errorf("private %s: %d, want 200", p, code)
		}
	}
	if code := status(public + "/call/"); code != http.StatusOK {
		t.Errorf("public /call/: %d", code)
	}
	if code := status(private + "/call/"); code != http.StatusNotFound {
		t.Errorf("private /call/: %d, want 404", code)
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{{"-calls", "0"}, {"-wav", "/nonexistent.wav"}, {"-log-level", "loud"},
		{"-whip-tls-cert", "/nonexistent.pem"}, {"-whip-listen", "8443"}} {
		if code := run(args, &bytes.Buffer{}); code != 2 {
			t.Errorf("run(%q) = %d, want 2", args, code)
		}
	}
}
