package turnchannel

import "fmt"

// Config configures an Offloader.
type Config struct {
	// NetNS is a network namespace file descriptor (0: the current one):
	// routes and interfaces are looked up and the program attached there.
	NetNS int
	// MaxFlows is how many flows (channels) the kernel holds (default
	// 16384; two map entries and two counter slots each). Beyond it, new
	// channels stay in user space.
	MaxFlows int
	// Clsact attaches with a clsact qdisc filter even where TCX exists
	// (for tests of the older kernels' path).
	Clsact bool
}

func (c *Config) validate() error {
	if c.MaxFlows == 0 {
		c.MaxFlows = 16384
	}
	if c.MaxFlows < 0 || c.MaxFlows > 1<<20 {
		return fmt.Errorf("%w: MaxFlows %d", ErrConfig, c.MaxFlows)
	}
	return nil
}
