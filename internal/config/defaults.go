package config

import "time"

// Default sets *v to def when *v is zero or negative: the "0: default" of a
// Config field, as a role's validate fills it in.
func Default[T int | int64 | float64 | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}
