package proc

import (
	"fmt"
	"sort"
	"strconv"
)

// Float returns option key as a number, or def when it is absent.
func (o Options) Float(key string, def float64) (float64, error) {
	v, ok := o[key]
	if !ok || v == "" {
		return def, nil
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return 0, fmt.Errorf("option %s=%q: %w", key, v, err)
	}
	return f, nil
}

// Int returns option key as an integer, or def when it is absent.
func (o Options) Int(key string, def int) (int, error) {
	v, ok := o[key]
	if !ok || v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("option %s=%q: %w", key, v, err)
	}
	return n, nil
}

// Only reports an error naming any option key not in known, so typos do not pass silently.
func (o Options) Only(known ...string) error {
	var bad []string
	for k := range o {
		ok := false
		for _, n := range known {
			ok = ok || k == n
		}
		if !ok {
			bad = append(bad, k)
		}
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		return fmt.Errorf("unknown options %v (known: %v)", bad, known)
	}
	return nil
}
