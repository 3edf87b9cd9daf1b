package ctl

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
)

var topOpts struct {
	interval time.Duration
	count    int
	clear    string
}

func topFlags(fs *flag.FlagSet) {
	fs.DurationVar(&topOpts.interval, "interval", time.Second, "refresh interval")
	fs.IntVar(&topOpts.count, "n", 0, "stop after this many refreshes (0: until interrupted)")
	fs.StringVar(&topOpts.clear, "clear", "auto", "clear the screen before each refresh: auto (on a terminal), always, never")
}

// maxWindowEvents bounds the events top remembers for its per-minute counts.
const maxWindowEvents = 100_000

// window counts events of the last minute (gaps by cause, refusals).
type window struct {
	mu     sync.Mutex
	events []windowEvent
	over   int // events not kept because the window was full
}

type windowEvent struct {
	at         time.Time
	kind, what string
	n          int
}

func (w *window) add(ev windowEvent) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.events) >= maxWindowEvents {
		w.over++
		return
	}
	w.events = append(w.events, ev)
}

// lastMinute returns per kind the total and the count by detail, dropping older events.
func (w *window) lastMinute(now time.Time) (total map[string]int, by map[string]map[string]int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	i := 0
	for i < len(w.events) && now.Sub(w.events[i].at) > time.Minute {
		i++
	}
	w.events = append(w.events[:0], w.events[i:]...)
	total, by = map[string]int{}, map[string]map[string]int{}
	for _, e := range w.events {
		total[e.kind] += e.n
		if by[e.kind] == nil {
			by[e.kind] = map[string]int{}
		}
		by[e.kind][e.what] += e.n
	}
	return total, by
}

// topView is one refresh.
type topView struct {
	At       time.Time           `json:"at"`
	Workers  []wire.WorkerView   `json:"workers"`
	Ingests  []wire.IngestView   `json:"ingests"`
	Tenants  []tenantRow         `json:"tenants"`
	Gaps     int                 `json:"gaps_last_minute"`    // frames lost, from gap events
	GapsBy   map[string]int      `json:"gaps_by_cause"`       // frames lost by cause
	Refused  int                 `json:"refused_last_minute"` // refused placements
	RefusedB map[string]int      `json:"refused_by_code"`     // by code
	progress map[[2]string]int64 // sum of next over legs, per call, for the next refresh's rate
}

type tenantRow struct {
	Tenant       string  `json:"tenant"`
	Calls        int     `json:"calls"`
	FramesPerSec float64 `json:"frames_per_sec"` // processed, from the progress workers report
}

// rateSpan is how far back top looks for the frame rate: progress comes in worker heartbeats
// (every 500 ms by default), so a rate over one short refresh would jump between 0 and double.
const rateSpan = 2 * time.Second

// snapshot reads the cluster once; prev (oldest first, may be empty) gives the frame rates,
// measured against the oldest one within rateSpan.
func (e *env) snapshot(win *window, prevs []*topView) (*topView, error) {
	v := &topView{At: time.Now(), progress: map[[2]string]int64{}}
	var ws wire.WorkersReply
	if err := e.api("workers", nil, &ws); err != nil {
		return nil, err
	}
	var is wire.IngestsReply
	if err := e.api(wire.APIIngests, nil, &is); err != nil {
		return nil, err
	}
	var cs wire.CallsReply
	if err := e.api("calls", nil, &cs); err != nil {
		return nil, err
	}
	v.Workers, v.Ingests = ws.Workers, is.Ingests
	rows := map[string]*tenantRow{}
	for _, c := range cs.Calls {
		r := rows[c.Tenant]
		if r == nil {
			r = &tenantRow{Tenant: c.Tenant}
			rows[c.Tenant] = r
		}
		r.Calls++
		var sum int64
		for _, p := range c.Progress {
			sum += max(p.Next, 0)
		}
		k := [2]string{c.Tenant, c.Call}
		v.progress[k] = sum
		if prev := pickPrev(prevs, time.Now()); prev != nil {
			if before, ok := prev.progress[k]; ok && sum >= before {
				if dt := v.At.Sub(prev.At).Seconds(); dt > 0 {
					r.FramesPerSec += float64(sum-before) / dt
				}
			}
		}
	}
	for _, r := range rows {
		v.Tenants = append(v.Tenants, *r)
	}
	sort.Slice(v.Tenants, func(i, j int) bool { return v.Tenants[i].Tenant < v.Tenants[j].Tenant })
	total, by := win.lastMinute(v.At)
	v.Gaps, v.GapsBy = total["gap"], by["gap"]
	v.Refused, v.RefusedB = total["refused"], by["refused"]
	return v, nil
}

// pickPrev returns the oldest snapshot no older than rateSpan, else (refreshes slower than
// rateSpan) the newest one, or nil.
func pickPrev(prevs []*topView, now time.Time) *topView {
	for _, p := range prevs {
		if now.Sub(p.At) <= rateSpan {
			return p
		}
	}
	if len(prevs) > 0 {
		return prevs[len(prevs)-1]
	}
	return nil
}

func (v *topView) render(w io.Writer) {
	fmt.Fprintf(w, "callrouter top  %s\n\n", v.At.Local().Format("15:04:05"))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKER\tPOOL\tACTIVE/CAP\tLAG_MS\tREADY\tDRAINING\tELIGIBLE")
	for _, x := range v.Workers {
		fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%.1f\t%v\t%v\t%v\n", x.ID, x.Pool, x.Active, x.Capacity, x.LagMS, x.Ready, x.Draining, x.Eligible)
	}
	fmt.Fprintln(tw, "\t\t\t\t\t\t")
	fmt.Fprintln(tw, "INGEST\tACTIVE\tREADY\tDRAINING\t\t\t")
	for _, x := range v.Ingests {
		fmt.Fprintf(tw, "%s\t%d\t%v\t%v\t\t\t\n", x.ID, x.Active, x.Ready, x.Draining)
	}
	fmt.Fprintln(tw, "\t\t\t\t\t\t")
	fmt.Fprintln(tw, "TENANT\tCALLS\tFRAMES/S\t\t\t\t")
	for _, t := range v.Tenants {
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t\t\t\t\n", t.Tenant, t.Calls, t.FramesPerSec)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "\nlast minute: %d frames lost in gaps%s, %d placements refused%s\n", v.Gaps, fmtCauses(v.GapsBy), v.Refused, fmtCauses(v.RefusedB))
}

func runTop(e *env) int {
	clear := topOpts.clear == "always" || topOpts.clear == "auto" && isTerminal(e.out)
	win := &window{}
	for _, kind := range []string{"gap", "refused"} {
		sub, err := e.nc.Subscribe(subjects.ClassEvents+".*.*."+kind, func(m *nats.Msg) {
			var ev wire.Event
			if json.Unmarshal(m.Data, &ev) != nil {
				return
			}
			var d struct {
				From  int64  `json:"from"`
				To    int64  `json:"to"`
				Cause string `json:"cause"`
				Code  string `json:"code"`
			}
			_ = json.Unmarshal(ev.Data, &d)
			if kind == "gap" {
				win.add(windowEvent{at: time.Now(), kind: kind, what: d.Cause, n: int(max(d.To-d.From+1, 1))})
			} else {
				win.add(windowEvent{at: time.Now(), kind: kind, what: d.Code, n: 1})
			}
		})
		if err != nil {
			return e.fail(err)
		}
		defer func() { _ = sub.Unsubscribe() }()
	}
	var prevs []*topView
	for i := 0; topOpts.count == 0 || i < topOpts.count; i++ {
		v, err := e.snapshot(win, prevs)
		if err != nil {
			return e.fail(err)
		}
		if e.json {
			b, _ := json.Marshal(v)
			fmt.Fprintln(e.out, string(b))
		} else {
			var b strings.Builder
			if clear {
				b.WriteString("\x1b[H\x1b[2J")
			}
			v.render(&b)
			fmt.Fprint(e.out, b.String())
		}
		prevs = append(prevs, v)
		for len(prevs) > 1 && v.At.Sub(prevs[0].At) > rateSpan {
			prevs = prevs[1:]
		}
		if topOpts.count > 0 && i == topOpts.count-1 {
			break
		}
		select {
		case <-e.ctx.Done():
			return ExitOK
		case <-time.After(topOpts.interval):
		}
	}
	return ExitOK
}
