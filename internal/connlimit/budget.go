package connlimit

import (
	"errors"
	"sort"
)

// ErrNoFDLimit: the descriptor limit cannot be read or raised on this
// system.
var ErrNoFDLimit = errors.New("connlimit: no descriptor limit on this system")

// maxLimit bounds the limit Split works from: far above any real
// descriptor table, low enough that avail*weight cannot overflow.
const maxLimit = 1 << 30

// Share is one role's claim on a process's descriptors: its listeners' total
// cap is Weight parts of what Split hands out.
type Share struct {
	Role   string
	Weight int
}

// Reserved returns the descriptors Split keeps back from the listeners of
// a process whose limit is limit: a quarter, at least 256 (never more than
// the limit), for what is not an accepted TCP connection (UDP sockets, relay
// ports, bus connections, outgoing connections, files).
func Reserved(limit int) int {
	r := limit / 4
	if r < 256 {
		r = 256
	}
	if r > limit {
		r = limit
	}
	return r
}

// Split divides the descriptor limit of a process, less Reserved(limit),
// among shares by weight, so that the roles' caps sum below the limit and a
// flood of one role's port cannot take the descriptors of another. Every
// share with a positive weight gets at least 1. Roles are keys of the
// result; shares with a weight of 0 or less get nothing and are absent.
func Split(limit int, shares ...Share) map[string]int {
	out := map[string]int{}
	sum := 0
	for _, s := range shares {
		if s.Weight > 0 {
			sum += s.Weight
		}
	}
	if sum == 0 || limit <= 0 {
		return out
	}
	if limit > maxLimit {
		limit = maxLimit // RLIM_INFINITY; and no overflow below
	}
	avail := limit - Reserved(limit)
	// Sorted for a deterministic remainder: the leftover of the integer
	// division goes to nobody (it stays in the reserve).
	sorted := append([]Share(nil), shares...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Role < sorted[j].Role })
	for _, s := range sorted {
		if s.Weight <= 0 {
			continue
		}
		n := avail * s.Weight / sum
		if n < 1 {
			n = 1
		}
		out[s.Role] = n
	}
	return out
}

// Cap returns the smaller positive of a configured cap and a budget: a
// configured cap of 0 means "the budget", a budget of 0 means "no budget".
func Cap(configured, budget int) int {
	switch {
	case budget <= 0:
		return configured
	case configured <= 0 || budget < configured:
		return budget
	default:
		return configured
	}
}
