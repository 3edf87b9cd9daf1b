//go:build unix

package proc

import (
	"os"
	"syscall"
)

// lockFile takes an exclusive advisory lock on f without waiting. A recording holds it on its
// .part file while it writes, so setup in another worker or process never touches a live file;
// the kernel drops it when the process dies.
func lockFile(f *os.File) error {
	return syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
}

// freeBytes returns the space an unprivileged process may still use on path's file system.
func freeBytes(path string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, err
	}
	return int64(uint64(st.Bavail) * uint64(st.Bsize)), nil
}
