package ctl

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/callrouter/callrouter/internal/cli"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

var tailOpts struct {
	kinds cli.List
	count int
	dur   time.Duration
	color string
}

func tailFlags(fs *flag.FlagSet) {
	tailOpts.kinds = nil
	fs.Var(&tailOpts.kinds, "kind", "only these event kinds, comma-separated (placed,gap,end,…)")
	fs.IntVar(&tailOpts.count, "n", 0, "stop after this many events (0: until interrupted)")
	fs.DurationVar(&tailOpts.dur, "for", 0, "stop after this long (0: until interrupted)")
	fs.StringVar(&tailOpts.color, "color", "auto", "colour by kind: auto (when writing to a terminal), always, never")
}

// tailSubjects are the subjects tail subscribes for a "tenant[/call]" argument and kinds.
func tailSubjects(arg string, kinds []string) []string {
	tenant, call := "*", "*"
	if arg != "" {
		t, c, _ := splitCall(arg, false)
		tenant = subjects.Encode(t)
		if c != "" {
			call = subjects.Encode(c)
		}
	}
	if len(kinds) == 0 {
		if tenant == "*" && call == "*" {
			return []string{subjects.ClassEvents + ".>"}
		}
		return []string{subjects.ClassEvents + "." + tenant + "." + call + ".*"}
	}
	var out []string
	for _, k := range kinds {
		out = append(out, subjects.ClassEvents+"."+tenant+"."+call+"."+k)
	}
	return out
}

// ANSI colours by kind: trouble red, placement changes yellow, call start and end green.
func kindColor(kind string) string {
	switch kind {
	case "gap", "error", "refused", "reaped":
		return "\x1b[31m"
	case "placed", "replaced", "stopped":
		return "\x1b[33m"
	case "start", "end", "accounting":
		return "\x1b[32m"
	}
	return ""
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// eventLine renders one event on one line.
func eventLine(ev wire.Event, color bool) string {
	kind := fmt.Sprintf("%-10s", ev.Kind)
	if c := kindColor(ev.Kind); color && c != "" {
		kind = c + kind + "\x1b[0m"
	}
	return fmt.Sprintf("%s %s/%s e%d %s %-18s %s", ev.Time.Local().Format("15:04:05.000"), ev.Tenant, ev.Call, ev.Epoch, kind, ev.Source, summarize(ev.Kind, ev.Data))
}

// summarize renders an event's data compactly: the fields operators read, else the JSON.
func summarize(kind string, data json.RawMessage) string {
	var m map[string]any
	if json.Unmarshal(data, &m) != nil {
		return string(data)
	}
	switch kind {
	case "gap":
		return fmt.Sprintf("leg %v seq %v..%v cause %v", m["leg"], m["from"], m["to"], m["cause"])
	case "accounting":
		var a struct {
			Reason string `json:"reason"`
			Legs   []struct {
				Leg       int            `json:"leg"`
				Processed int            `json:"processed"`
				Lost      int            `json:"lost"`
				LostBy    map[string]int `json:"lost_by_cause"`
			} `json:"legs"`
		}
		if json.Unmarshal(data, &a) != nil {
			break
		}
		parts := []string{"reason " + a.Reason}
		for _, l := range a.Legs {
			parts = append(parts, fmt.Sprintf("leg %d processed %d lost %d%s", l.Leg, l.Processed, l.Lost, fmtCauses(l.LostBy)))
		}
		return strings.Join(parts, "; ")
	}
	// Everything else: key=value in key order, nested values as JSON.
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		v, _ := json.Marshal(m[k])
		fmt.Fprintf(&b, "%s=%s", k, strings.Trim(string(v), `"`))
	}
	return b.String()
}

func sortStrings(s []string) { sort.Strings(s) }

func runTail(e *env) int {
	color := tailOpts.color == "always" || tailOpts.color == "auto" && isTerminal(e.out)
	arg := ""
	if len(e.args) == 1 {
		arg = e.args[0]
	}
	var mu sync.Mutex
	seen := 0
	done := make(chan struct{})
	var once sync.Once
	handle := func(m *nats.Msg) {
		mu.Lock()
		defer mu.Unlock()
		if tailOpts.count > 0 && seen >= tailOpts.count {
			return
		}
		var ev wire.Event
		if json.Unmarshal(m.Data, &ev) != nil {
			return
		}
		seen++
		if e.json {
			fmt.Fprintln(e.out, strings.TrimSpace(string(m.Data)))
		} else {
			fmt.Fprintln(e.out, eventLine(ev, color))
		}
		if tailOpts.count > 0 && seen >= tailOpts.count {
			once.Do(func() { close(done) })
		}
	}
	for _, s := range tailSubjects(arg, tailOpts.kinds) {
		sub, err := e.nc.Subscribe(s, handle)
		if err != nil {
			return e.fail(err)
		}
		defer func() { _ = sub.Unsubscribe() }()
	}
	if err := e.nc.FlushTimeout(e.timeout); err != nil {
		return e.fail(fmt.Errorf("%w: %v", errUnreachable, err))
	}
	var stop <-chan time.Time
	if tailOpts.dur > 0 {
		stop = time.After(tailOpts.dur)
	}
	select {
	case <-done:
	case <-stop:
	case <-e.ctx.Done():
	}
	return ExitOK
}
