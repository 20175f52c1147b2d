package netlab

import "errors"

var (
	// ErrNotRoot means the process may not create network namespaces.
	ErrNotRoot = errors.New("netlab: needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN)")
	// ErrBadName means a node name is not 1-12 characters of [a-z0-9] (a
	// lab name: 1-16).
	ErrBadName = errors.New("netlab: bad name (nodes: 1-12 of [a-z0-9], labs: 1-16)")
	// ErrExists means a lab or node of that name exists already.
	ErrExists = errors.New("netlab: name already in use")
	// ErrFull means a network has no address left for another node.
	ErrFull = errors.New("netlab: no address left on the network")
	// ErrClosed means the lab was torn down.
	ErrClosed = errors.New("netlab: lab closed")
)
