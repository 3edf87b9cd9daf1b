package ctl

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/callrouter/callrouter/internal/cli"
	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/player"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wav"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

var checkOpts struct {
	tenant string
	ingest string
	pools  cli.List
	frames int
	wait   time.Duration
}

func checkFlags(fs *flag.FlagSet) {
	fs.StringVar(&checkOpts.tenant, "tenant", "callrouter-check", "tenant of the synthetic call (NATS permissions must let this user publish its audio)")
	fs.StringVar(&checkOpts.ingest, "ingest-id", "", "ingest id the check runs as (default ctl-check-<host>-<pid>)")
	checkOpts.pools = cli.List{"default"}
	fs.Var(&checkOpts.pools, "pools", "worker pools the call is placed on, comma-separated")
	fs.IntVar(&checkOpts.frames, "frames", 50, "20 ms frames per leg (50: a one-second call)")
	fs.DurationVar(&checkOpts.wait, "wait", 10*time.Second, "how long to wait for the call's accounting after it ends")
}

// checkResult is what check prints with -json.
type checkResult struct {
	Tenant     string            `json:"tenant"`
	Call       string            `json:"call"`
	Pass       bool              `json:"pass"`
	Problem    string            `json:"problem,omitempty"`
	Placements []wire.Placement  `json:"placements,omitempty"`
	PlaceMS    float64           `json:"place_ms"`
	Frames     int               `json:"frames_per_leg"`
	Legs       []proc.LegAccount `json:"legs"` // summed over the workers (and pools) that held the call
	TookMS     int64             `json:"took_ms"`
}

// checkTone returns a two-leg 8 kHz recording of n frames (300 Hz and 600 Hz).
func checkTone(n int) (*filesrc.Recording, error) {
	ch := make([][]byte, 2)
	for c := range ch {
		ch[c] = make([]byte, n*160*2)
		for i := 0; i < n*160; i++ {
			v := int16(8000 * math.Sin(2*math.Pi*float64(300*(c+1))*float64(i)/8000))
			binary.LittleEndian.PutUint16(ch[c][2*i:], uint16(v))
		}
	}
	return filesrc.FromAudio(&wav.Audio{Format: wav.FormatPCM, Rate: 8000, BitsPerSample: 16, Channels: ch}, 0)
}

func runCheck(e *env) int {
	o := checkOpts
	if o.ingest == "" {
		o.ingest = subjects.Encode(fmt.Sprintf("ctl-check-%s-%d", strings.ReplaceAll(cli.Hostname(), ".", "-"), os.Getpid()))
	}
	start := time.Now()
	res := checkResult{Tenant: o.tenant, Call: fmt.Sprintf("check-%d", start.UnixNano()), Frames: o.frames}
	done := func(problem string) int {
		res.Problem, res.Pass, res.TookMS = problem, problem == "", time.Since(start).Milliseconds()
		if e.json {
			e.emitJSON(res)
		} else {
			for _, l := range res.Legs {
				fmt.Fprintf(e.out, "check: leg %d %s: %d/%d frames processed, %d duplicates, %d lost%s\n", l.Leg, l.Name, l.Processed, o.frames*len(o.pools), l.Duplicates, l.Lost, fmtCauses(l.LostBy))
			}
			if res.Pass {
				fmt.Fprintf(e.out, "check: PASS %s/%s in %s\n", res.Tenant, res.Call, time.Since(start).Round(time.Millisecond))
			} else {
				fmt.Fprintf(e.out, "check: FAIL %s/%s: %s\n", res.Tenant, res.Call, problem)
			}
		}
		if res.Pass {
			return ExitOK
		}
		return ExitFailed
	}

	cfg := ingest.DefaultConfig()
	cfg.ID, cfg.Pools, cfg.DrainTimeout = o.ingest, o.pools, 2*time.Second
	node, err := ingest.New(cfg, ingest.Deps{NC: e.nc, Log: zerolog.Nop(), Registry: prometheus.NewRegistry()})
	if err != nil {
		fmt.Fprintf(e.errOut, "callrouterctl check: %v\n", err)
		return ExitUsage
	}
	rec, err := checkTone(o.frames)
	if err != nil {
		return e.fail(err)
	}

	// Every accounting event of the call, from any worker of any pool.
	var mu sync.Mutex
	var accts []proc.Accounting
	sub, err := e.nc.Subscribe(subjects.Event(subjects.Encode(o.tenant), subjects.Encode(res.Call), "accounting"), func(m *nats.Msg) {
		var ev wire.Event
		var a proc.Accounting
		if json.Unmarshal(m.Data, &ev) == nil && json.Unmarshal(ev.Data, &a) == nil {
			mu.Lock()
			accts = append(accts, a)
			mu.Unlock()
		}
	})
	if err != nil {
		return e.fail(err)
	}
	defer func() { _ = sub.Unsubscribe() }()

	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	runDone, err := node.Start(ctx) // the call starts once the node serves its requests
	if err != nil {
		node.Close()
		return e.fail(fmt.Errorf("%w: ingest node: %v", errUnreachable, err))
	}
	defer func() {
		cancel()
		<-runDone
		node.Close()
	}()
	if err := e.nc.FlushTimeout(e.timeout); err != nil {
		return e.fail(fmt.Errorf("%w: %v", errUnreachable, err))
	}

	playCtx, playCancel := context.WithTimeout(ctx, time.Duration(o.frames)*20*time.Millisecond+2*cfg.PlaceTimeout+5*time.Second)
	defer playCancel()
	t0 := time.Now()
	spec := rec.Spec(o.tenant, res.Call, map[string]string{"source": "callrouterctl check"})
	placed := make(chan struct{})
	var playErr error
	var call *ingest.Call
	go func() {
		defer close(placed)
		call, playErr = player.Play(playCtx, node, rec, spec, o.frames, 1)
	}()
	<-placed
	if call != nil {
		res.Placements = call.Placements()
		res.PlaceMS = float64(time.Since(t0).Microseconds()) / 1000
	}
	if playErr != nil {
		return done("the call did not run: " + playErr.Error())
	}
	want := o.frames * len(o.pools)
	sum := func() []proc.LegAccount {
		mu.Lock()
		defer mu.Unlock()
		legs := make([]proc.LegAccount, len(spec.Legs))
		for i, l := range spec.Legs {
			legs[i] = proc.LegAccount{Leg: l.Index, Name: l.Name, FirstSeq: -1, LastSeq: -1}
		}
		for _, a := range accts {
			for _, l := range a.Legs {
				if int(l.Leg) >= len(legs) {
					continue
				}
				s := &legs[l.Leg]
				s.Processed += l.Processed
				s.GapFilled += l.GapFilled
				s.Replayed += l.Replayed
				s.Duplicates += l.Duplicates
				s.Lost += l.Lost
				for k, v := range l.LostBy {
					if s.LostBy == nil {
						s.LostBy = map[string]int{}
					}
					s.LostBy[k] += v
				}
			}
		}
		return legs
	}
	complete := func(legs []proc.LegAccount) bool {
		for _, l := range legs {
			if l.Processed+l.Lost < want {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(o.wait)
	for res.Legs = sum(); !complete(res.Legs) && time.Now().Before(deadline); res.Legs = sum() {
		select {
		case <-e.ctx.Done():
			return done("interrupted")
		case <-time.After(20 * time.Millisecond):
		}
	}
	for _, l := range res.Legs {
		switch {
		case l.Processed+l.Lost < want:
			return done(fmt.Sprintf("leg %d: accounting for %d of %d frames after %s (is the accounting processor configured?)", l.Leg, l.Processed+l.Lost, want, o.wait))
		case l.Lost > 0:
			return done(fmt.Sprintf("leg %d: %d frames lost%s", l.Leg, l.Lost, fmtCauses(l.LostBy)))
		case l.Processed != want:
			return done(fmt.Sprintf("leg %d: %d frames processed, want %d", l.Leg, l.Processed, want))
		}
	}
	return done("")
}
