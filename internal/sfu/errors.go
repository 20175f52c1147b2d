package sfu

import "errors"

// Sentinel errors of the sfu package.
var (
	// ErrConfig is returned for an invalid Config.
	ErrConfig = errors.New("sfu: invalid config")
)
