package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/wire"
)

// TestOneProcessModePlaysTheSample runs the README's first command (faster than real time) and
// checks that every frame of both legs of every call was processed.
func TestOneProcessModePlaysTheSample(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"-calls", "3", "-speed", "8", "-http", "127.0.0.1:0", "-whip-udp", "127.0.0.1:0", "-record-dir", t.TempDir(), "-json", "-log-level", "error"}, &out); code != 0 {
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

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{{"-calls", "0"}, {"-wav", "/nonexistent.wav"}, {"-log-level", "loud"}} {
		if code := run(args, &bytes.Buffer{}); code != 2 {
			t.Errorf("run(%q) = %d, want 2", args, code)
		}
	}
}
