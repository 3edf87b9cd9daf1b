package loadtest

import (
	"bytes"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat; 100 on every Linux
// architecture Go supports.
const clockTicks = 100

// ProcUsage is the CPU and memory a watched process used during a phase.
type ProcUsage struct {
	PID       int     `json:"pid"`
	Name      string  `json:"name"`
	CPUCores  float64 `json:"cpu_cores"`  // CPU seconds per wall second, averaged over the phase
	PeakCores float64 `json:"peak_cores"` // highest one-sample average
	MaxRSSMB  float64 `json:"max_rss_mb"` // highest resident set size sampled
	Note      string  `json:"note,omitempty"`
}

// procSample reads utime+stime (seconds) and RSS (bytes) of a process from /proc.
func procSample(pid int) (cpu float64, rss int64, name string, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, "", err
	}
	// The command name is in parentheses and may hold spaces; fields resume after the last ')'.
	l, r := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if l < 0 || r < l {
		return 0, 0, "", fmt.Errorf("loadtest: /proc/%d/stat: unexpected format", pid)
	}
	name = string(b[l+1 : r])
	f := strings.Fields(string(b[r+1:]))
	// After the name: state(0) ppid(1) ... utime(11) stime(12) ... rss(21) in pages.
	if len(f) < 22 {
		return 0, 0, "", fmt.Errorf("loadtest: /proc/%d/stat: %d fields", pid, len(f))
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	pages, _ := strconv.ParseInt(f[21], 10, 64)
	return float64(ut+st) / clockTicks, pages * int64(os.Getpagesize()), name, nil
}

// procWatch samples processes once a second until stopped.
type procWatch struct {
	pids  []int
	notes map[int]string
	stopC chan struct{}
	wg    sync.WaitGroup

	mu     sync.Mutex
	first  map[int]float64
	last   map[int]float64
	prev   map[int]float64
	peak   map[int]float64
	rss    map[int]int64
	names  map[int]string
	start  time.Time
	end    time.Time
	latest float64 // total cores in the last sample, for the progress line

	machine0, machine1 float64 // busy CPU seconds of the whole machine at start and at the last sample
}

// machineBusy returns the CPU seconds the whole machine has spent busy (all but idle and
// iowait), from the first line of /proc/stat.
func machineBusy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0
	}
	var busy int64
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i == 3 || i == 4 || i >= 8 { // idle, iowait; guest time is already in user
			continue
		}
		busy += n
	}
	return float64(busy) / clockTicks
}

// MachineUsage is what the whole machine did during a phase.
type MachineUsage struct {
	BusyCores       float64 `json:"busy_cores"`       // all processes
	BackgroundCores float64 `json:"background_cores"` // processes the run does not watch (other work on a shared machine)
	LoadAvg         string  `json:"loadavg_end"`
}

func newProcWatch(pids []int, notes map[int]string) *procWatch {
	return &procWatch{pids: pids, notes: notes, stopC: make(chan struct{}), first: map[int]float64{}, last: map[int]float64{},
		prev: map[int]float64{}, peak: map[int]float64{}, rss: map[int]int64{}, names: map[int]string{}}
}

func (w *procWatch) run(every time.Duration) {
	w.start = time.Now()
	w.sample(0)
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-w.stopC:
				return
			case <-t.C:
				w.sample(every)
			}
		}
	}()
}

func (w *procWatch) sample(dt time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	total := 0.0
	for _, pid := range w.pids {
		cpu, rss, name, err := procSample(pid)
		if err != nil {
			continue
		}
		if _, ok := w.first[pid]; !ok {
			w.first[pid] = cpu
		}
		if dt > 0 {
			c := (cpu - w.prev[pid]) / dt.Seconds()
			w.peak[pid] = max(w.peak[pid], c)
			total += c
		}
		w.prev[pid], w.last[pid] = cpu, cpu
		w.rss[pid] = max(w.rss[pid], rss)
		w.names[pid] = name
	}
	w.latest = total
	w.end = time.Now()
	if dt == 0 && w.machine0 == 0 {
		w.machine0 = machineBusy()
	}
	w.machine1 = machineBusy()
}

func (w *procWatch) cores() float64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.latest
}

// machine returns the machine's usage over the watch; call after stop.
func (w *procWatch) machine(watched []ProcUsage) MachineUsage {
	w.mu.Lock()
	defer w.mu.Unlock()
	var m MachineUsage
	if wall := w.end.Sub(w.start).Seconds(); wall > 0 {
		m.BusyCores = round3((w.machine1 - w.machine0) / wall)
		m.BackgroundCores = round3(max(0, m.BusyCores-sumCPU(watched)))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 3 {
			m.LoadAvg = strings.Join(f[:3], " ")
		}
	}
	return m
}

func (w *procWatch) stop() []ProcUsage {
	close(w.stopC)
	w.wg.Wait()
	w.sample(0)
	w.mu.Lock()
	defer w.mu.Unlock()
	wall := w.end.Sub(w.start).Seconds()
	var out []ProcUsage
	for _, pid := range w.pids {
		if _, ok := w.first[pid]; !ok {
			out = append(out, ProcUsage{PID: pid, Note: "not readable in /proc"})
			continue
		}
		u := ProcUsage{PID: pid, Name: w.names[pid], PeakCores: round3(w.peak[pid]), MaxRSSMB: round3(float64(w.rss[pid]) / (1 << 20)), Note: w.notes[pid]}
		if wall > 0 {
			u.CPUCores = round3((w.last[pid] - w.first[pid]) / wall)
		}
		out = append(out, u)
	}
	return out
}

// freeMemory returns to the system what this process's Go heap no longer uses, so that a phase
// run in this process (the tester, and the in-process callrouter) starts without the resident
// memory the previous phase left behind: the runtime otherwise gives freed heap back only
// gradually, minutes later, and the next phase's max RSS would include it.
func freeMemory() { debug.FreeOSMemory() }

func round3(v float64) float64 { return float64(int64(v*1000+0.5)) / 1000 }
