//go:build unix

package connlimit

import (
	"fmt"
	"syscall"
)

// RaiseFDLimit raises the soft limit of open descriptors (RLIMIT_NOFILE) to
// the hard limit and returns the new soft limit. (The Go runtime already
// does this at start since Go 1.19; calling it again makes the figure
// explicit and holds when the runtime's raise failed.)
func RaiseFDLimit() (int, error) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, fmt.Errorf("%w: %w", ErrNoFDLimit, err)
	}
	if r.Cur < r.Max {
		r.Cur = r.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
			return 0, fmt.Errorf("%w: %w", ErrNoFDLimit, err)
		}
	}
	const maxInt = int(^uint(0) >> 1)
	if r.Cur > uint64(maxInt) {
		return maxInt, nil
	}
	return int(r.Cur), nil
}
