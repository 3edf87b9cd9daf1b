//go:build unix

package ingest

import "syscall"

// mapRegion maps size bytes of anonymous private memory, outside the Go heap. It panics when the
// system refuses, as the runtime does when the heap cannot grow.
func mapRegion(size int) []byte {
	b, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		panic("ingest: mapping ring memory: " + err.Error())
	}
	return b
}

// unmapRegion gives a region from mapRegion back to the system; nothing may use it afterwards.
// Munmap fails only for a range that is not a mapping, which no region is.
func unmapRegion(b []byte) { _ = syscall.Munmap(b) }
