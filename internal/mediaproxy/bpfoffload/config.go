package bpfoffload

import (
	"fmt"
	"time"
)

// Config configures an Offloader.
type Config struct {
	// NetNS is a network namespace file descriptor (0: the current one):
	// routes and interfaces are looked up and the program attached there.
	NetNS int
	// MaxFlows is how many flows the map holds (default 32768; two
	// entries each).
	MaxFlows int
	// StatsMaxAge is how stale counters read back may be (default 500 ms):
	// one walk of the map serves every Stats call within it.
	StatsMaxAge time.Duration
}

func (c *Config) validate() error {
	if c.MaxFlows == 0 {
		c.MaxFlows = 32768
	}
	if c.MaxFlows < 0 || c.MaxFlows > 1<<24 {
		return fmt.Errorf("%w: MaxFlows %d", ErrConfig, c.MaxFlows)
	}
	if c.StatsMaxAge <= 0 {
		c.StatsMaxAge = 500 * time.Millisecond
	}
	return nil
}
