package sfu

import (
	"runtime"

	"github.com/traverse-rtc/traverse/internal/udpio"
)

// poller is an empty socket set: waiting on it only times out.
type poller struct{ set *udpio.Set }

func newPoller() (*poller, error) {
	s, err := udpio.NewSet(1)
	if err != nil {
		return nil, err
	}
	return &poller{set: s}, nil
}

// wait blocks in epoll_wait for ms milliseconds, then yields. It stays
// runtime.Gosched, not udpio.Yield: docs/sfu.md ("Scheduler poll") found
// the scheduler round trip is what saves CPU, and udpio.Yield is the one
// that avoids it; the SFU's figure was measured with Gosched.
func (p *poller) wait(ms int) {
	_, _ = p.set.Wait(ms)
	runtime.Gosched()
}

func (p *poller) close() { p.set.Close() }
