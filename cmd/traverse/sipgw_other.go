//go:build !linux

package main

import (
	"errors"

	"github.com/traverse-rtc/traverse/internal/mediaproxy"
)

type noOffloader struct{ mediaproxy.Offloader }

func (noOffloader) Close() error { return nil }

func newNftOffloader() (noOffloader, error) {
	return noOffloader{}, errors.New("--offload nftables needs Linux")
}
