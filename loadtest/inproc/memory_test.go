package inproc

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/ingest"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/callrouter/callrouter/loadtest/account"
	"github.com/callrouter/callrouter/loadtest/probe"
)

// BenchmarkMemoryPerCall measures what one more two-leg G.711 call costs the one-process stack
// (ingest, router, two workers running accounting and the probe, embedded nats-server) once its
// 5 s replay rings are full: resident memory, Go heap and goroutine stacks per call, between the
// idle stack and 500 calls that have each sent 260 frames per leg (sent faster than real time:
// memory, not latency, is measured). Run with -benchtime 1x; figures are per call. Each
// iteration starts after the heap has been given back to the system; ingest's pool of ring blocks
// keeps the last iteration's rings resident (internal/ingest blocks.go), so with -benchtime 2x
// or more only the first iteration counts the rings.
func BenchmarkMemoryPerCall(b *testing.B) {
	const calls, frames = 500, 260
	for range b.N {
		wc := worker.DefaultConfig()
		wc.Processors = []string{"accounting", probe.ProcessorName}
		wc.Capacity = calls
		wc.MaxFrameAge, wc.LagThreshold = time.Minute, time.Minute // faster than real time is not lag here
		st, err := stack.Start(stack.Config{Workers: 2, Worker: wc, Log: testLog(b)})
		if err != nil {
			b.Fatal(err)
		}
		if err := waitWorkers(context.Background(), st, 2); err != nil {
			b.Fatal(err)
		}
		detach, err := probe.Attach("mem", nopSink{}) // as a run does: the probe keeps no histogram of its own
		if err != nil {
			b.Fatal(err)
		}
		debug.FreeOSMemory() // start clean: not with what the previous iteration left resident
		rss0, ms0 := memNow(b)
		var cs []*ingest.Call
		for i := range calls {
			c, err := st.Ingest.StartCall(context.Background(), session.Spec{ID: session.ID{Tenant: "mem", Call: "m-" + strconv.Itoa(i)},
				Legs: []session.Leg{{Index: 0, Name: "a", Codec: frame.CodecPCMU, Rate: 8000}, {Index: 1, Name: "b", Codec: frame.CodecPCMU, Rate: 8000}}})
			if err != nil {
				b.Fatal(err)
			}
			cs = append(cs, c)
		}
		payload := bytes.Repeat([]byte{0xff}, 160)
		for f := range frames {
			for _, c := range cs {
				for leg := range 2 {
					if err := c.Send(leg, payload, 0); err != nil {
						b.Fatal(err)
					}
				}
			}
			if f%10 == 9 {
				time.Sleep(20 * time.Millisecond) // let the workers keep up
			}
		}
		time.Sleep(2 * time.Second)
		rss1, ms1 := memNow(b)
		if *heapProfile != "" {
			writeHeapProfile(b, *heapProfile)
		}
		b.ReportMetric(float64(rss1-rss0)/calls, "rss-bytes/call")
		b.ReportMetric(float64(int64(ms1.HeapInuse)-int64(ms0.HeapInuse))/calls, "heap-bytes/call")
		b.ReportMetric(float64(int64(ms1.StackInuse)-int64(ms0.StackInuse))/calls, "stack-bytes/call")
		b.ReportMetric(float64(ms1.NumGC-ms0.NumGC), "gcs")
		for _, c := range cs {
			c.End("hangup")
		}
		_ = st.Close()
		detach()
	}
}

// heapProfile names a file for the heap profile at full load (the benchmark's own -memprofile is
// written after the stack has closed): go test -bench MemoryPerCall -memprofilerate 4096 -args
// -heapprofile FILE.
var heapProfile = flag.String("heapprofile", "", "write the heap profile at full load to this file")

func writeHeapProfile(b *testing.B, name string) {
	f, err := os.Create(name)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		b.Fatal(err)
	}
}

type nopSink struct{}

func (nopSink) Frame(uint32, time.Duration, time.Time) {}
func (nopSink) Loss(uint32, int64, time.Time)          {}
func (nopSink) Report(string, string, []account.Leg)   {}

// memNow collects garbage and returns the process's resident memory and the runtime's figures.
func memNow(b *testing.B) (int64, runtime.MemStats) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Skip("no /proc/self/status")
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var kb int64
		if n, _ := fmt.Sscanf(sc.Text(), "VmRSS: %d kB", &kb); n == 1 {
			return kb << 10, ms
		}
	}
	b.Skip("no VmRSS")
	return 0, ms
}
