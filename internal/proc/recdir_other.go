//go:build !unix

package proc

import (
	"errors"
	"os"
)

// lockFile does nothing where flock is missing: crash recovery at setup must then not share a
// record directory with a running worker.
func lockFile(*os.File) error { return nil }

// freeBytes is not known here; a min_free budget refuses every recording.
func freeBytes(string) (int64, error) { return 0, errors.New("min_free needs a unix system") }
