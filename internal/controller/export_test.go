package controller

import (
	"context"
	"time"

	"github.com/traverse-rtc/traverse/internal/bus"
)

// Abandon makes Run end without releasing the lease, as a killed process.
func (c *Controller) Abandon() { c.noRelease = true }

// Check runs one node check as Run's loop does; Step one lease step.
func (c *Controller) Check(ctx context.Context) { c.check(ctx) }
func (c *Controller) Step(ctx context.Context)  { c.stepLease(ctx) }

// Queue puts an announcement received at at in the loop's queue, as the
// bus subscription does, without the loop taking it in.
func (c *Controller) Queue(a bus.NodeAnnounce, at time.Time) { c.queue <- item{announce: &a, at: at} }
