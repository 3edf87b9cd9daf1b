package proc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Recording statuses: the "status" of a recording event and the label of
// callrouter_recordings_total (a closed set).
const (
	RecComplete  = "complete"  // the whole call, renamed to its final name
	RecPartial   = "partial"   // what was written before a write error or the size limit, renamed
	RecFailed    = "failed"    // no file: the directory or file could not be opened, or finishing failed
	RecRefused   = "refused"   // not started: the disk budget was exceeded
	RecRecovered = "recovered" // a .part left by a crash, finished at setup
	RecRemoved   = "removed"   // a .part left by a crash with no audio in it, removed at setup
)

// Recordings counts recordings by how they ended. Register it with a component's registry
// (RegisterMetrics).
var Recordings = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "callrouter_recordings_total",
	Help: "Recordings by status: complete, partial (write error or size limit; what was written is kept), failed, refused (disk budget), recovered and removed (.part files a crash left, at setup).",
}, []string{"status"})

// RegisterMetrics adds the processors' metrics to reg; a registry that already has them is left
// as it is, so every worker of a one-process stack can call it on a shared registry.
func RegisterMetrics(reg prometheus.Registerer) {
	if err := reg.Register(Recordings); err != nil {
		if _, ok := err.(prometheus.AlreadyRegisteredError); !ok {
			panic(err)
		}
	}
}

// budgetRescan is how often the bytes under a record directory are counted again, so that
// files removed by a retention job give their room back.
const budgetRescan = 30 * time.Second

// recDir is a record directory shared by every record processor of the process that writes to
// it: the bytes under it (for max_bytes) and the crash leftovers found when it was set up.
type recDir struct {
	path string
	used atomic.Int64 // bytes under path at the last count plus bytes written since

	mu        sync.Mutex
	counted   time.Time
	counting  bool
	recovered []Recording // logged by the first call that starts, then cleared
}

var (
	recDirsMu sync.Mutex
	recDirs   = map[string]*recDir{}
)

// openRecDir creates dir if needed, checks that a file can be created in it, and the first time
// in this process finishes the .part files a crash left there. Its error stops the processor
// from being built, so a worker with an unusable record directory does not start. With a
// max_bytes budget the bytes under dir are counted here, before the worker takes calls.
func openRecDir(dir string, maxBytes int64) (*recDir, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("record: dir %q: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o750); err != nil {
		return nil, fmt.Errorf("record: dir %q cannot be created: %w", dir, err)
	}
	probe, err := os.CreateTemp(abs, ".callrouter-probe-*")
	if err != nil {
		return nil, fmt.Errorf("record: dir %q is not writable: %w", dir, err)
	}
	probe.Close()
	os.Remove(probe.Name())

	recDirsMu.Lock()
	defer recDirsMu.Unlock()
	for p := range recDirs { // forget directories that were removed (tests, fuzzing)
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			delete(recDirs, p)
		}
	}
	d := recDirs[abs]
	if d == nil {
		d = &recDir{path: abs}
		d.recovered = recoverDir(abs)
		recDirs[abs] = d
	}
	if maxBytes > 0 {
		d.mu.Lock()
		if d.counted.IsZero() {
			d.used.Store(d.walk())
			d.counted = time.Now()
		}
		d.mu.Unlock()
	}
	return d, nil
}

// walk returns the bytes under the directory now (about a microsecond a file).
func (d *recDir) walk() int64 {
	var n int64
	_ = filepath.WalkDir(d.path, func(_ string, e fs.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			if fi, err := e.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// overBudget reports why a new recording must not start, or "".
func (d *recDir) overBudget(maxBytes, minFree int64) string {
	if maxBytes > 0 {
		// Counted again at most every budgetRescan, by the one call that finds the count stale
		// (on its goroutine, at its start); the others use the last figure meanwhile.
		d.mu.Lock()
		recount := !d.counting && time.Since(d.counted) > budgetRescan
		d.counting = d.counting || recount
		d.mu.Unlock()
		if recount {
			n := d.walk()
			d.mu.Lock()
			d.used.Store(n)
			d.counted, d.counting = time.Now(), false
			d.mu.Unlock()
		}
		if u := d.used.Load(); u >= maxBytes {
			return fmt.Sprintf("%d bytes under %s, max_bytes %d", u, d.path, maxBytes)
		}
	}
	if minFree > 0 {
		free, err := freeBytes(d.path)
		if err != nil {
			return fmt.Sprintf("free space of %s unknown: %v", d.path, err)
		}
		if free < minFree {
			return fmt.Sprintf("%d bytes free on %s, min_free %d", free, d.path, minFree)
		}
	}
	return ""
}

// takeRecovered returns the crash leftovers not yet logged.
func (d *recDir) takeRecovered() []Recording {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := d.recovered
	d.recovered = nil
	return r
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// recoverDir finishes the .part files under dir/<tenant>/ that no live recording holds.
func recoverDir(dir string) []Recording {
	var out []Recording
	tenants, _ := os.ReadDir(dir)
	for _, t := range tenants {
		if !t.IsDir() {
			continue
		}
		td := filepath.Join(dir, t.Name())
		files, _ := os.ReadDir(td)
		for _, e := range files {
			if n := e.Name(); e.Type().IsRegular() && strings.HasPrefix(n, ".") && strings.HasSuffix(n, ".wav.part") {
				if r, ok := recoverPart(td, n); ok {
					out = append(out, r)
				}
			}
		}
	}
	return out
}

// recoverPart finishes one .part file: the WAV header's sizes are set to the whole frames
// present, the file is synced and renamed to its final name. A file without a readable header or
// without a sample is removed. ok is false when a live recording holds the file.
func recoverPart(dir, name string) (r Recording, ok bool) {
	tmp := filepath.Join(dir, name)
	final := filepath.Join(dir, strings.TrimSuffix(strings.TrimPrefix(name, "."), ".part"))
	r.Path = tmp
	f, err := os.OpenFile(tmp, os.O_RDWR, 0)
	if err != nil {
		return r, false
	}
	defer f.Close()
	if lockFile(f) != nil {
		return r, false
	}
	remove := func(why string) (Recording, bool) {
		r.Status, r.Reason = RecRemoved, why
		if err := os.Remove(tmp); err != nil {
			r.Error = err.Error()
		}
		Recordings.WithLabelValues(RecRemoved).Inc()
		return r, true
	}
	fi, err := f.Stat()
	if err != nil {
		return remove(err.Error())
	}
	hdr := make([]byte, 64)
	n, _ := io.ReadFull(f, hdr)
	hdrLen, rate, align, err := parseRecHeader(hdr[:n])
	if err != nil {
		return remove(err.Error())
	}
	data := (fi.Size() - hdrLen) / align * align
	data = min(data, maxDataBytes/align*align)
	if data <= 0 {
		return remove("no samples")
	}
	binary.LittleEndian.PutUint32(hdr[4:], uint32(hdrLen-8+data))
	binary.LittleEndian.PutUint32(hdr[hdrLen-4:], uint32(data))
	if _, err := os.Stat(final); err == nil {
		final = strings.TrimSuffix(final, ".wav") + "-recovered.wav" // never overwrite a finished file
	}
	err = f.Truncate(hdrLen + data)
	if err == nil {
		_, err = f.WriteAt(hdr[:hdrLen], 0)
	}
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		r.Status, r.Reason, r.Error = RecFailed, "recover", err.Error()
		Recordings.WithLabelValues(RecFailed).Inc()
		return r, true
	}
	r.Path, r.Status, r.Reason, r.Rate = final, RecRecovered, "crash", rate
	r.Samples = data / align
	r.DurationMS = r.Samples * 1000 / int64(max(rate, 1))
	Recordings.WithLabelValues(RecRecovered).Inc()
	return r, true
}

// parseRecHeader reads the header the record processor writes: RIFF, WAVE, a 16- or 18-byte fmt
// chunk, then the data chunk header. It returns the header's length, the rate and the bytes per
// sample frame.
func parseRecHeader(h []byte) (hdrLen int64, rate int, align int64, err error) {
	bad := errors.New("no WAV header")
	if len(h) < 44 || string(h[0:4]) != "RIFF" || string(h[8:16]) != "WAVEfmt " {
		return 0, 0, 0, bad
	}
	fmtLen := int64(binary.LittleEndian.Uint32(h[16:]))
	if fmtLen != 16 && fmtLen != 18 {
		return 0, 0, 0, bad
	}
	hdrLen = 20 + fmtLen + 8
	if int64(len(h)) < hdrLen || string(h[hdrLen-8:hdrLen-4]) != "data" {
		return 0, 0, 0, bad
	}
	rate = int(binary.LittleEndian.Uint32(h[24:]))
	align = int64(binary.LittleEndian.Uint16(h[32:]))
	if align == 0 || rate == 0 {
		return 0, 0, 0, bad
	}
	return hdrLen, rate, align, nil
}

// parseBytes reads a byte count: a whole number with an optional binary suffix K, M, G or T
// (also KiB, MiB, GiB, TiB).
func parseBytes(key, v string) (int64, error) {
	s := strings.TrimSuffix(strings.TrimSpace(v), "iB")
	shift := 0
	if i := strings.IndexAny(s, "KMGT"); i >= 0 && i == len(s)-1 {
		shift = 10 * (1 + strings.IndexByte("KMGT", s[i]))
		s = s[:i]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)>>shift {
		return 0, fmt.Errorf("option %s=%q: want a byte count such as 500M or 20G", key, v)
	}
	return n << shift, nil
}
