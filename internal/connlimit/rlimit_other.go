//go:build !unix

package connlimit

// RaiseFDLimit returns ErrNoFDLimit: this system has no RLIMIT_NOFILE.
func RaiseFDLimit() (int, error) { return 0, ErrNoFDLimit }
