package cluster

import "errors"

// Sentinel errors of the cluster package.
var (
	// ErrBadRecord is returned for a bucket record that does not decode or
	// validate; readers drop such records and count them.
	ErrBadRecord = errors.New("cluster: bad record")
	// ErrConflict is returned when a compare-and-set write finds another
	// revision than the one it was based on: someone else wrote first.
	ErrConflict = errors.New("cluster: revision conflict")
	// ErrLeaseLost is returned by Lease.Renew when another controller
	// holds the lease now: the caller must stop acting as leader at once.
	ErrLeaseLost = errors.New("cluster: leadership lease lost")
	// ErrNotFound is returned for a key that is not in its bucket.
	ErrNotFound = errors.New("cluster: not found")
	// ErrUnavailable is returned by a Directory that cannot reach its
	// bucket now (no controller has made it yet, or the last bind failed
	// within retryBind).
	ErrUnavailable = errors.New("cluster: directory unavailable")
)
