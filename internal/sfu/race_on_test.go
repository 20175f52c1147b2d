//go:build race

package sfu

// raceEnabled: the race detector is on (sync.Pool drops items at random
// under it, so allocation counts do not hold).
const raceEnabled = true
