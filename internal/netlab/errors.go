package netlab

import "errors"

var (
	// ErrNotRoot means the process may not create network namespaces.
	ErrNotRoot = errors.New("netlab: needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN)")
	// ErrBadName means a lab or node name is not 1-12 characters of [a-z0-9].
	ErrBadName = errors.New("netlab: names are 1-12 characters of [a-z0-9]")
	// ErrExists means a lab or node of that name exists already.
	ErrExists = errors.New("netlab: name already in use")
	// ErrFull means a network has no address left for another node.
	ErrFull = errors.New("netlab: no address left on the network")
	// ErrClosed means the lab was torn down.
	ErrClosed = errors.New("netlab: lab closed")
)
