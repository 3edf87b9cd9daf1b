package ctl

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wire"
)

var callsFilter struct{ tenant, worker, ingest string }

func callsFlags(fs *flag.FlagSet) {
	fs.StringVar(&callsFilter.tenant, "tenant", "", "only this tenant's calls")
	fs.StringVar(&callsFilter.worker, "worker", "", "only calls placed on this worker")
	fs.StringVar(&callsFilter.ingest, "ingest", "", "only calls this ingest node owns")
}

// filterCalls keeps the calls that match every non-empty filter.
func filterCalls(calls []wire.CallView, tenant, worker, ingest string) []wire.CallView {
	out := []wire.CallView{}
	for _, c := range calls {
		if tenant != "" && c.Tenant != tenant || ingest != "" && c.Ingest != ingest {
			continue
		}
		if worker != "" {
			on := false
			for _, p := range c.Placements {
				on = on || p.Worker == worker
			}
			if !on {
				continue
			}
		}
		out = append(out, c)
	}
	return out
}

func fmtPlacements(ps []wire.Placement) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.Pool+"="+p.Worker)
	}
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ",")
}

func runCalls(e *env) int {
	var rep wire.CallsReply
	if err := e.api("calls", nil, &rep); err != nil {
		return e.fail(err)
	}
	if !rep.OK {
		return e.fail(fmt.Errorf("router.api.calls: %s: %s", rep.Code, rep.Reason))
	}
	calls := filterCalls(rep.Calls, callsFilter.tenant, callsFilter.worker, callsFilter.ingest)
	if e.json {
		return e.emitJSON(calls)
	}
	tw := tabwriter.NewWriter(e.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TENANT\tCALL\tEPOCH\tINGEST\tPLACEMENTS\tPROGRESS (leg:next)")
	for _, c := range calls {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", c.Tenant, c.Call, c.Epoch, c.Ingest, fmtPlacements(c.Placements), fmtProgress(c.Progress))
	}
	_ = tw.Flush()
	fmt.Fprintf(e.out, "%d calls\n", len(calls))
	return ExitOK
}

// holder is one worker holding a call, as it answered on ctl.<t>.<c>.
type holder struct {
	Worker     string           `json:"worker"`
	Pool       string           `json:"pool"`
	Epoch      uint32           `json:"epoch"`
	Status     json.RawMessage  `json:"status,omitempty"`
	Accounting *proc.Accounting `json:"accounting,omitempty"`
	Error      string           `json:"error,omitempty"`
}

// callReport is what `call` prints with -json.
type callReport struct {
	Tenant  string             `json:"tenant"`
	Call    string             `json:"call"`
	View    *wire.CallView     `json:"view,omitempty"`    // the routers' view: owner, epoch, placements, progress
	History *wire.HistoryReply `json:"history,omitempty"` // lifecycle events one router saw
	Holders []holder           `json:"holders"`           // the workers holding it now
}

// askHolders sends a control command to every worker holding the call and returns their replies
// by worker.
func (e *env) askHolders(tenant, call, command string) (map[string]wire.CtlReply, error) {
	msgs, err := e.gather(subjects.Ctl(subjects.Encode(tenant), subjects.Encode(call)), wire.CtlRequest{V: wire.V, Command: command}, 300*time.Millisecond)
	if err != nil {
		return nil, err
	}
	out := map[string]wire.CtlReply{}
	for _, m := range msgs {
		var r wire.CtlReply
		if json.Unmarshal(m.Data, &r) == nil && r.Worker != "" {
			out[r.Worker] = r
		}
	}
	return out, nil
}

func runCall(e *env) int {
	tenant, call, _ := splitCall(e.args[0], true)
	rep := callReport{Tenant: tenant, Call: call, Holders: []holder{}}
	var cv wire.CallReply
	if err := e.api("call", wire.CallQuery{V: wire.V, Tenant: tenant, Call: call}, &cv); err != nil {
		return e.fail(err)
	}
	if cv.OK {
		rep.View = cv.Call
	}
	var h wire.HistoryReply
	if err := e.api(wire.APIHistory, wire.CallQuery{V: wire.V, Tenant: tenant, Call: call}, &h); err != nil {
		return e.fail(err)
	}
	if h.OK {
		rep.History = &h
	}
	status, err := e.askHolders(tenant, call, "status")
	if err != nil {
		return e.fail(err)
	}
	acct, err := e.askHolders(tenant, call, proc.CtlAccounting)
	if err != nil {
		return e.fail(err)
	}
	for w, s := range status {
		hd := holder{Worker: w, Pool: s.Pool, Epoch: s.Epoch, Status: s.Data}
		if !s.OK {
			hd.Error = s.Code + ": " + s.Reason
		}
		if a, ok := acct[w]; ok && a.OK {
			var ac proc.Accounting
			if json.Unmarshal(a.Data, &ac) == nil {
				hd.Accounting = &ac
			}
		}
		rep.Holders = append(rep.Holders, hd)
	}
	if rep.View == nil && rep.History == nil && len(rep.Holders) == 0 {
		if e.json {
			e.emitJSON(rep)
		}
		return e.fail(fmt.Errorf("call %s/%s: unknown (no ingest owns it, no worker holds it, no router saw its events)", tenant, call))
	}
	if e.json {
		return e.emitJSON(rep)
	}
	printCall(e, rep)
	return ExitOK
}

func printCall(e *env, r callReport) {
	w := e.out
	fmt.Fprintf(w, "call %s/%s\n", r.Tenant, r.Call)
	if v := r.View; v != nil {
		fmt.Fprintf(w, "  owner:      %s, epoch %d\n  placements: %s\n  progress:   %s (leg:next expected)\n", v.Ingest, v.Epoch, fmtPlacements(v.Placements), fmtProgress(v.Progress))
	} else {
		fmt.Fprintf(w, "  owner:      none (the call has ended, or its ingest is gone)\n")
	}
	for _, h := range r.Holders {
		fmt.Fprintf(w, "  held by %s (pool %s, epoch %d)", h.Worker, h.Pool, h.Epoch)
		var st struct {
			LagMS float64 `json:"lag_ms"`
		}
		if json.Unmarshal(h.Status, &st) == nil {
			fmt.Fprintf(w, ", lag %.1f ms", st.LagMS)
		}
		if h.Error != "" {
			fmt.Fprintf(w, ", error %s", h.Error)
		}
		fmt.Fprintln(w)
		if h.Accounting != nil {
			printAccounting(e, "    ", *h.Accounting)
		}
	}
	if r.History == nil {
		fmt.Fprintf(w, "  history:    none seen by the router that answered\n")
		return
	}
	fmt.Fprintf(w, "  history (%d events", len(r.History.Events))
	if r.History.Dropped > 0 {
		fmt.Fprintf(w, ", %d more not kept", r.History.Dropped)
	}
	fmt.Fprintln(w, "):")
	for _, ev := range r.History.Events {
		fmt.Fprintf(w, "    %s  e%-3d %-10s %-18s %s\n", ev.Time.Local().Format("15:04:05.000"), ev.Epoch, ev.Kind, ev.Source, summarize(ev.Kind, ev.Data))
		if ev.Kind == "accounting" {
			var ac proc.Accounting
			if json.Unmarshal(ev.Data, &ac) == nil {
				printAccounting(e, "        ", ac)
			}
		}
	}
}

func printAccounting(e *env, indent string, a proc.Accounting) {
	for _, l := range a.Legs {
		fmt.Fprintf(e.out, "%sleg %d %-8s processed %d (gap-filled %d, replayed %d), duplicates %d, lost %d%s\n", indent, l.Leg, l.Name,
			l.Processed, l.GapFilled, l.Replayed, l.Duplicates, l.Lost, fmtCauses(l.LostBy))
	}
}

func fmtCauses(m map[string]int) string {
	if len(m) == 0 {
		return ""
	}
	var s []string
	for k, v := range m {
		s = append(s, fmt.Sprintf("%s=%d", k, v))
	}
	sortStrings(s)
	return " (" + strings.Join(s, " ") + ")"
}

func runWorkers(e *env) int {
	var rep wire.WorkersReply
	if err := e.api("workers", nil, &rep); err != nil {
		return e.fail(err)
	}
	if !rep.OK {
		return e.fail(errors.New("router.api.workers: " + rep.Reason))
	}
	if e.json {
		return e.emitJSON(rep.Workers)
	}
	tw := tabwriter.NewWriter(e.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKER\tPOOL\tMODE\tCAPACITY\tACTIVE\tLAG_MS\tREADY\tDRAINING\tELIGIBLE\tLAST_SEEN")
	for _, w := range rep.Workers {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%.1f\t%v\t%v\t%v\t%s ago\n", w.ID, w.Pool, w.Mode, w.Capacity, w.Active, w.LagMS, w.Ready, w.Draining, w.Eligible, since(w.LastSeen))
	}
	_ = tw.Flush()
	return ExitOK
}

func runIngests(e *env) int {
	var rep wire.IngestsReply
	if err := e.api(wire.APIIngests, nil, &rep); err != nil {
		return e.fail(err)
	}
	if !rep.OK {
		return e.fail(errors.New("router.api.ingests: " + rep.Reason))
	}
	if e.json {
		return e.emitJSON(rep.Ingests)
	}
	tw := tabwriter.NewWriter(e.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "INGEST\tACTIVE\tREADY\tDRAINING\tLAST_SEEN")
	for _, in := range rep.Ingests {
		fmt.Fprintf(tw, "%s\t%d\t%v\t%v\t%s ago\n", in.ID, in.Active, in.Ready, in.Draining, since(in.LastSeen))
	}
	_ = tw.Flush()
	return ExitOK
}

func since(t time.Time) time.Duration { return time.Since(t).Round(time.Millisecond) }
