//go:build !unix

package ingest

// mapRegion allocates on the heap where there is no mmap: correct, without the memory saving.
func mapRegion(size int) []byte { return make([]byte, size) }

// unmapRegion leaves a region on the heap to the garbage collector.
func unmapRegion([]byte) {}
