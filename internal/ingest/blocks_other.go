//go:build !unix

package ingest

// mapRegion allocates on the heap where there is no mmap: correct, without the memory saving.
func mapRegion(size int) []byte { return make([]byte, size) }
