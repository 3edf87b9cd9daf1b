package sip

import (
	"context"
	"encoding/csv"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/player"
	"github.com/callrouter/callrouter/internal/session"
)

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestSIPLoad measures, for CALLROUTER_SIP_LOAD concurrent uac_pcap calls (7 s of PCMA in
// 30 ms packets each), the CPU the whole one-process callrouter (ingest with SIP and RTP, NATS,
// router, workers) spends per call, against a baseline in the same run: the same number of calls
// with the same audio played by the file source (ingest core, no SIP, no RTP). It checks that
// no frame was lost and reports INVITE → 200 OK times as SIPp measured them (placement
// included). Not run by default: CALLROUTER_SIP_LOAD=200 go test -run TestSIPLoad -v.
func TestSIPLoad(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("CALLROUTER_SIP_LOAD"))
	if n <= 0 {
		t.Skip("set CALLROUTER_SIP_LOAD=<calls> to run")
	}
	rate := max(20, n/5)
	e := startEnv(t, 2, nil)
	var want []byte
	for _, p := range pcapRTP(t, "/usr/share/sip-tester/g711a.pcap") {
		want = append(want, p...)
	}

	// Baseline: n file-source calls of the same 354 frames, started at the same rate.
	rc := &filesrc.Recording{Codec: frame.CodecPCMA, Rate: 8000}
	var leg [][]byte
	for i := 0; i+160 <= len(want); i += 160 {
		leg = append(leg, want[i:i+160])
	}
	rc.Frames = [][][]byte{leg}
	c0, w0 := cpuTime(), time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			spec := rc.Spec("base", fmt.Sprintf("base-%d", i), nil)
			spec.Legs[0] = session.Leg{Index: 0, Name: "caller", Codec: frame.CodecPCMA, Rate: 8000}
			if _, err := player.Play(context.Background(), e.st.Ingest, rc, spec, 0, 1); err != nil {
				errs <- err
			}
		}()
		time.Sleep(time.Second / time.Duration(rate))
	}
	wg.Wait()
	baseCPU, baseWall := cpuTime()-c0, time.Since(w0)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "baseline calls to stop", func() bool { return len(callKeys()) == n })
	rec.reset()

	dir := pcapDir(t)
	var amu sync.Mutex
	var answers []time.Duration
	e.srv.answerHook = func(d time.Duration) {
		amu.Lock()
		answers = append(answers, d)
		amu.Unlock()
	}
	c1, w1 := cpuTime(), time.Now()
	e.sipp(t, dir, 120*time.Second, "-sn", "uac_pcap", "-m", strconv.Itoa(n), "-l", strconv.Itoa(n), "-r", strconv.Itoa(rate),
		"-trace_rtt", "-rtt_freq", "1")
	sipCPU, sipWall := cpuTime()-c1, time.Since(w1)
	eventually(t, 20*time.Second, "SIP calls to stop", func() bool { return len(callKeys()) == n })
	bad := 0
	for _, k := range callKeys() {
		if !checkPcapLeg(t, k, rec.snapshot(k+"/0"), want) {
			bad++
		}
	}
	rtts := readRTT(t, dir)
	slices.Sort(rtts)
	amu.Lock()
	slices.Sort(answers)
	amu.Unlock()
	pctOf := func(v []time.Duration, p float64) time.Duration {
		if len(v) == 0 {
			return 0
		}
		return v[min(len(v)-1, int(p*float64(len(v))))]
	}
	pct := func(p float64) time.Duration { return pctOf(rtts, p) }
	// Calls per core: a live call needs 50 frames per second, so the CPU per published frame
	// (everything in the process: SIP, RTP, ingest, NATS, router, workers) times 50 is the CPU
	// one call costs per second.
	frames := float64(n * len(want) / 160)
	sipPerFrame, basePerFrame := sipCPU.Seconds()/frames, baseCPU.Seconds()/frames
	t.Logf("%d calls (%d lost a frame): SIP+RTP %v CPU over %v wall, file-source baseline %v CPU over %v wall; ratio %.2f",
		n, bad, sipCPU.Round(time.Millisecond), sipWall.Round(time.Millisecond), baseCPU.Round(time.Millisecond),
		baseWall.Round(time.Millisecond), float64(sipCPU)/float64(baseCPU))
	t.Logf("CPU per frame: SIP %.1f µs, baseline %.1f µs; concurrent G.711 calls per core (whole one-process stack): SIP %.0f, baseline %.0f",
		sipPerFrame*1e6, basePerFrame*1e6, 1/(50*sipPerFrame), 1/(50*basePerFrame))
	t.Logf("INVITE received → 200 OK sent (server side, placement included), %d calls: p50 %v p90 %v p99 %v max %v", len(answers),
		pctOf(answers, 0.5).Round(time.Microsecond), pctOf(answers, 0.9).Round(time.Microsecond), pctOf(answers, 0.99).Round(time.Microsecond),
		pctOf(answers, 1).Round(time.Microsecond))
	t.Logf("INVITE sent → 200 OK received (SIPp, 1 ms resolution), %d calls: p50 %v p90 %v p99 %v max %v", len(rtts), pct(0.5), pct(0.9),
		pct(0.99), pct(1))
}

// readRTT reads SIPp's -trace_rtt file: one response time (ms) per call.
func readRTT(t testing.TB, dir string) []time.Duration {
	files, _ := filepath.Glob(filepath.Join(dir, "*_rtt.csv"))
	var out []time.Duration
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		r := csv.NewReader(fh)
		r.Comma = ';'
		r.FieldsPerRecord = -1
		rows, _ := r.ReadAll()
		fh.Close()

		for _, row := range rows {
			if len(row) < 3 {
				continue
			}
			ms, err := strconv.ParseFloat(strings.TrimSpace(row[1]), 64)
			if err != nil {
				continue
			}
			out = append(out, time.Duration(ms*float64(time.Millisecond)))
		}
	}
	return out
}
