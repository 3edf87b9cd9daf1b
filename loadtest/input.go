package loadtest

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/callrouter/callrouter/internal/filesrc"
)

// Recording is one input cut into 20 ms payloads per leg, with the name of the file it came from.
type Recording struct {
	Name string
	*filesrc.Recording
}

// LoadInputs reads the given WAV and pcap files; a directory contributes every *.wav and *.pcap
// file in it, in name order. legs limits the legs taken from each file (0 keeps them all). The
// recordings are played round-robin across calls.
func LoadInputs(paths []string, legs int) ([]Recording, error) {
	var files []string
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("loadtest: input: %w", err)
		}
		if !st.IsDir() {
			files = append(files, p)
			continue
		}
		ents, err := os.ReadDir(p)
		if err != nil {
			return nil, fmt.Errorf("loadtest: input: %w", err)
		}
		var found []string
		for _, e := range ents {
			if !e.IsDir() && isInput(e.Name()) {
				found = append(found, filepath.Join(p, e.Name()))
			}
		}
		if len(found) == 0 {
			return nil, fmt.Errorf("loadtest: input: directory %s holds no .wav or .pcap file", p)
		}
		slices.Sort(found)
		files = append(files, found...)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("loadtest: no input files")
	}
	out := make([]Recording, 0, len(files))
	for _, f := range files {
		r, err := LoadFile(f, legs)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func isInput(name string) bool {
	ext := strings.ToLower(filepath.Ext(name))
	return ext == ".wav" || ext == ".pcap"
}

// LoadFile reads one WAV or pcap file (by extension; anything else is tried as WAV).
func LoadFile(path string, legs int) (Recording, error) {
	var (
		r   *filesrc.Recording
		err error
	)
	if strings.EqualFold(filepath.Ext(path), ".pcap") {
		var b []byte
		if b, err = os.ReadFile(path); err == nil {
			r, err = ParsePcap(b, legs)
		}
	} else {
		r, err = filesrc.Load(path, legs)
	}
	if err != nil {
		return Recording{}, fmt.Errorf("loadtest: input %s: %w", path, err)
	}
	if r.Len() == 0 {
		return Recording{}, fmt.Errorf("loadtest: input %s: no audio", path)
	}
	return Recording{Name: filepath.Base(path), Recording: r}, nil
}
