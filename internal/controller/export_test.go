package controller

// Abandon makes Run end without releasing the lease, as a killed process.
func (c *Controller) Abandon() { c.noRelease = true }
