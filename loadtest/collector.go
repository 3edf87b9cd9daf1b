package loadtest

import (
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/callrouter/callrouter/loadtest/account"
)

// CauseUnaccounted counts frames sent that a worker neither processed nor reported as lost: the
// call's handler never started, stopped early, or its report never arrived. It joins the
// workers' own gap causes (package proc).
const CauseUnaccounted = "unaccounted"

// LegStats is one leg's account: what the load tester sent and what the worker side saw.
type LegStats struct {
	Call        string           `json:"call"`
	Leg         uint8            `json:"leg"`
	Sent        int64            `json:"sent"`
	Received    int64            `json:"received"`
	Lost        int64            `json:"lost"`
	Duplicated  int64            `json:"duplicated"`
	Reordered   int64            `json:"reordered"`
	Replayed    int64            `json:"replayed"`
	GapFilled   int64            `json:"gap_filled"`
	Paused      int64            `json:"paused,omitempty"` // withheld by ingest during a pause: accounted, not lost
	Unaccounted int64            `json:"unaccounted"`
	LostBy      map[string]int64 `json:"lost_by_cause,omitempty"`
	Stop        string           `json:"stop,omitempty"`
	reported    bool
}

type legKey struct {
	call string
	leg  uint8
}

// Collector gathers one phase's measurements: latency histograms, per-leg accounts, a timeline.
// The worker side (the processor or the baseline subscribers) and the sending side both write
// into it concurrently.
type Collector struct {
	tenant   string
	start    time.Time
	interval time.Duration

	shards []colShard

	mu     sync.Mutex
	legs   map[legKey]*LegStats
	stops  map[string]int
	sentTL []int64
	setup  *hdr.Histogram // call setup time

	received atomic.Int64
	lost     atomic.Int64
	stopped  atomic.Int64 // worker-side call reports

	final   map[string]bool // calls whose last report came (a stop that is not a hand-over), under mu
	settled atomic.Int64    // len(final)
}

// handOvers are the worker stop reasons after which another worker may go on with the call
// (proc.StopReleased, StopSuperseded, StopMigrated): a call stopped so may send a second report,
// and a run that counted reports instead of calls stopped waiting while some calls' last reports
// were still coming: their frames showed as unaccounted.
var handOvers = map[string]bool{"released": true, "superseded": true, "migrated": true}

// colShard is one lock's worth of latency histogram and timeline.
type colShard struct {
	mu sync.Mutex
	h  *hdr.Histogram
	tl []tlPoint
	_  [40]byte
}

// tlPoint is one timeline interval of one shard.
type tlPoint struct {
	received int64
	lost     int64
	lat      [tlBuckets]uint32
}

// Timeline latency buckets: quarter-octaves from 50 µs; enough to chart per-interval p99.
const (
	tlBuckets = 64
	tlBase    = 50 * time.Microsecond
	maxTL     = 4000
)

func tlBucket(d time.Duration) int {
	if d <= tlBase {
		return 0
	}
	return min(tlBuckets-1, int(math.Ceil(4*math.Log2(float64(d)/float64(tlBase)))))
}

func tlBucketUpper(b int) time.Duration {
	return time.Duration(float64(tlBase) * math.Exp2(float64(b)/4))
}

func newCollector(tenant string, start time.Time, interval time.Duration, shards int) *Collector {
	c := &Collector{tenant: tenant, start: start, interval: interval, shards: make([]colShard, shards),
		legs: map[legKey]*LegStats{}, stops: map[string]int{}, final: map[string]bool{}, setup: newHist()}
	for i := range c.shards {
		c.shards[i].h = newHist()
	}
	return c
}

func (c *Collector) slot(now time.Time) int {
	i := int(now.Sub(c.start) / c.interval)
	return max(0, min(i, maxTL-1))
}

func growTL(tl []tlPoint, i int) []tlPoint {
	for len(tl) <= i {
		tl = append(tl, tlPoint{})
	}
	return tl
}

// Frame records one frame received at now with the given latency (account.Sink).
func (c *Collector) Frame(key uint32, lat time.Duration, now time.Time) {
	i := c.slot(now)
	sh := &c.shards[key%uint32(len(c.shards))]
	sh.mu.Lock()
	account.RecordUS(sh.h, lat)
	sh.tl = growTL(sh.tl, i)
	p := &sh.tl[i]
	p.received++
	p.lat[tlBucket(lat)]++
	sh.mu.Unlock()
	c.received.Add(1)
}

// Loss records n frames reported lost at now (account.Sink).
func (c *Collector) Loss(key uint32, n int64, now time.Time) {
	i := c.slot(now)
	sh := &c.shards[key%uint32(len(c.shards))]
	sh.mu.Lock()
	sh.tl = growTL(sh.tl, i)
	sh.tl[i].lost += n
	sh.mu.Unlock()
	c.lost.Add(n)
}

// mergeHist adds a worker-side histogram (from a remote "loadtest" event) into the latency.
func (c *Collector) mergeHist(key uint32, h *hdr.Histogram) {
	sh := &c.shards[key%uint32(len(c.shards))]
	sh.mu.Lock()
	sh.h.Merge(h)
	sh.mu.Unlock()
	c.received.Add(h.TotalCount())
}

func (c *Collector) legLocked(call string, leg uint8) *LegStats {
	k := legKey{call, leg}
	l := c.legs[k]
	if l == nil {
		l = &LegStats{Call: call, Leg: leg}
		c.legs[k] = l
	}
	return l
}

// sent records what the sending side sent on one call, once the call is over.
func (c *Collector) sent(call string, perLeg []int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, n := range perLeg {
		c.legLocked(call, uint8(i)).Sent += n
	}
}

// sentAt counts frames sent in the timeline interval of now.
func (c *Collector) sentAt(now time.Time, n int64) {
	i := c.slot(now)
	c.mu.Lock()
	for len(c.sentTL) <= i {
		c.sentTL = append(c.sentTL, 0)
	}
	c.sentTL[i] += n
	c.mu.Unlock()
}

// injectedLoss counts frames the tester itself dropped (SIP mode impairments) where no worker
// could see a gap: after the last packet of a leg.
func (c *Collector) injectedLoss(call string, leg uint8, n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.legLocked(call, leg)
	l.Lost += n
	if l.LostBy == nil {
		l.LostBy = map[string]int64{}
	}
	l.LostBy[account.CauseNetwork] += n
}

func (c *Collector) setupTime(d time.Duration) {
	c.mu.Lock()
	account.RecordUS(c.setup, d)
	c.mu.Unlock()
}

// Report merges one worker-side call report (account.Sink).
func (c *Collector) Report(call string, stop string, legs []account.Leg) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range legs {
		t := &legs[i]
		l := c.legLocked(call, uint8(i))
		l.Received += t.Received
		l.Lost += t.Lost
		l.Duplicated += t.Duplicated
		l.Reordered += t.Reordered
		l.Replayed += t.Replayed
		l.GapFilled += t.GapFilled
		l.Paused += t.Paused
		for k, v := range t.LostBy {
			if l.LostBy == nil {
				l.LostBy = map[string]int64{}
			}
			l.LostBy[k] += v
		}
		l.Stop = stop
		l.reported = true
	}
	c.stops[stop]++
	c.stopped.Add(1)
	if !handOvers[stop] && !c.final[call] {
		c.final[call] = true
		c.settled.Add(1)
	}
}

// Totals sums the accounts of every leg.
type Totals struct {
	Legs        int              `json:"legs"`
	Sent        int64            `json:"sent"`
	Received    int64            `json:"received"`
	Lost        int64            `json:"lost"`
	Duplicated  int64            `json:"duplicated"`
	Reordered   int64            `json:"reordered"`
	Replayed    int64            `json:"replayed"`
	GapFilled   int64            `json:"gap_filled"`
	Paused      int64            `json:"paused,omitempty"`
	Unaccounted int64            `json:"unaccounted"`
	LostBy      map[string]int64 `json:"lost_by_cause,omitempty"`
	Stops       map[string]int   `json:"worker_stops,omitempty"`
}

// LossRatio is (lost + unaccounted) / sent.
func (t Totals) LossRatio() float64 {
	if t.Sent == 0 {
		return 0
	}
	return float64(t.Lost+t.Unaccounted) / float64(t.Sent)
}

// finish computes unaccounted frames and returns the totals and the legs that were not clean
// (at most maxBad, worst first).
func (c *Collector) finish(maxBad int) (Totals, []LegStats) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := Totals{LostBy: map[string]int64{}, Stops: map[string]int{}}
	var bad []LegStats
	for _, l := range c.legs {
		l.Unaccounted = max(0, l.Sent-l.Received-l.Lost-l.Paused)
		if l.Unaccounted > 0 {
			if l.LostBy == nil {
				l.LostBy = map[string]int64{}
			}
			l.LostBy[CauseUnaccounted] += l.Unaccounted
		}
		t.Legs++
		t.Sent += l.Sent
		t.Received += l.Received
		t.Lost += l.Lost
		t.Duplicated += l.Duplicated
		t.Reordered += l.Reordered
		t.Replayed += l.Replayed
		t.GapFilled += l.GapFilled
		t.Paused += l.Paused
		t.Unaccounted += l.Unaccounted
		for k, v := range l.LostBy {
			t.LostBy[k] += v
		}
		if l.Lost+l.Unaccounted+l.Duplicated+l.Reordered > 0 {
			bad = append(bad, *l)
		}
	}
	for k, v := range c.stops {
		t.Stops[k] = v
	}
	sort.Slice(bad, func(i, j int) bool {
		a, b := bad[i], bad[j]
		if x, y := a.Lost+a.Unaccounted, b.Lost+b.Unaccounted; x != y {
			return x > y
		}
		return a.Call < b.Call || (a.Call == b.Call && a.Leg < b.Leg)
	})
	if len(bad) > maxBad {
		bad = bad[:maxBad]
	}
	return t, bad
}

// latency returns the merged latency histogram.
func (c *Collector) latency() *hdr.Histogram {
	h := newHist()
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		h.Merge(sh.h)
		sh.mu.Unlock()
	}
	return h
}

// TimelinePoint is one interval of a phase.
type TimelinePoint struct {
	T        float64 `json:"t_s"`
	Sent     int64   `json:"sent"`
	Received int64   `json:"received"`
	Lost     int64   `json:"lost"`
	P99MS    float64 `json:"p99_ms"`
}

func (c *Collector) timeline() []TimelinePoint {
	n := 0
	for i := range c.shards {
		c.shards[i].mu.Lock()
		n = max(n, len(c.shards[i].tl))
		c.shards[i].mu.Unlock()
	}
	c.mu.Lock()
	n = max(n, len(c.sentTL))
	sent := append([]int64(nil), c.sentTL...)
	c.mu.Unlock()
	out := make([]TimelinePoint, n)
	lat := make([][tlBuckets]uint64, n)
	for i := range out {
		out[i].T = (time.Duration(i+1) * c.interval).Seconds()
		if i < len(sent) {
			out[i].Sent = sent[i]
		}
	}
	for s := range c.shards {
		sh := &c.shards[s]
		sh.mu.Lock()
		for i, p := range sh.tl {
			out[i].Received += p.received
			out[i].Lost += p.lost
			for b, v := range p.lat {
				lat[i][b] += uint64(v)
			}
		}
		sh.mu.Unlock()
	}
	for i := range out {
		var total uint64
		for _, v := range lat[i] {
			total += v
		}
		if total == 0 {
			continue
		}
		want := (total*99 + 99) / 100
		var cum uint64
		for b, v := range lat[i] {
			cum += v
			if cum >= want {
				out[i].P99MS = float64(tlBucketUpper(b)) / 1e6
				break
			}
		}
	}
	return out
}
