//go:build !linux

package ingest

import "time"

// threadCPU: only Linux tells a thread's CPU time here.
func threadCPU() (time.Duration, bool) { return 0, false }
