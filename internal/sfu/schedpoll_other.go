//go:build !linux

package sfu

import (
	"errors"
	"runtime"
	"time"
)

type poller struct{}

func newPoller() (*poller, error) { return nil, errors.New("no epoll on this platform") }

func (*poller) wait(ms int) {
	time.Sleep(time.Duration(ms) * time.Millisecond)
	runtime.Gosched()
}

func (*poller) close() {}
