package ingest

import (
	"runtime"
	"sync"
)

// The replay rings are most of ingest's memory (5 s of a two-leg G.711 call is 88 KB) and hold
// no pointers, so they live outside the Go heap: the garbage collector sets its heap goal at
// twice the live heap (GOGC=100), and rings on the heap made it keep a second ring's worth of
// garbage per call (637 MB resident at 2,500 calls against 59 MB for raw NATS). Off the heap a
// ring costs its own size and the collector's goal follows the rest of the process.
//
// blocks hands out fixed-size byte blocks carved from regions mapped outside the heap (mapRegion;
// the heap where the platform has no mmap) and takes them back for reuse; the memory is kept for
// the next call while any block of its size is out, and unmapped when the last one comes back
// (every call ended, as when a node closes: a later node or load-test phase in the same process
// does not inherit a pool sized for the last one's peak). A block goes back only when the ring that
// holds it is unreachable (runtime.AddCleanup), so no frame can be read from a block that has
// been handed to another call, or when the call ends (ring.release), whichever comes first: the
// collector does not see this memory, so it may run rarely while calls come and go.

// blockRegion is the most a region maps at once: a region holds as many blocks as fit.
const blockRegion = 4 << 20

type blockPool struct {
	mu      sync.Mutex
	free    [][]byte
	regions [][]byte // mapped for this size
	out     int      // blocks handed out and not back
}

var blockPools sync.Map // block size → *blockPool

// getBlock returns a block of size bytes; its contents are unspecified.
func getBlock(size int) []byte {
	p := poolOf(size)
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.free) == 0 {
		n := max(1, blockRegion/size)
		region := mapRegion(n * size)
		p.regions = append(p.regions, region)
		for i := 0; i < n; i++ {
			p.free = append(p.free, region[i*size:(i+1)*size:(i+1)*size])
		}
	}
	b := p.free[len(p.free)-1]
	p.free[len(p.free)-1] = nil
	p.free = p.free[:len(p.free)-1]
	p.out++
	return b
}

// putBlock clears b (a call's audio is not left lying in memory) and keeps it for reuse, or
// unmaps its pool's regions when it was the last block out.
func putBlock(b []byte) {
	clear(b)
	p := poolOf(cap(b))
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.out--; p.out > 0 {
		p.free = append(p.free, b[:cap(b)])
		return
	}
	for _, r := range p.regions {
		unmapRegion(r)
	}
	p.free, p.regions = nil, nil
}

func poolOf(size int) *blockPool {
	if p, ok := blockPools.Load(size); ok {
		return p.(*blockPool)
	}
	p, _ := blockPools.LoadOrStore(size, &blockPool{})
	return p.(*blockPool)
}

// offHeap returns a block of size bytes that goes back to its pool once owner is unreachable,
// unless the returned cleanup is stopped first (the owner then puts the block back itself). The
// block must not be referenced from anywhere that outlives owner.
func offHeap[T any](owner *T, size int) ([]byte, runtime.Cleanup) {
	b := getBlock(size)
	return b, runtime.AddCleanup(owner, putBlock, b)
}
