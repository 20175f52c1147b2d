//go:build linux

package nftoffload

import (
	"testing"

	"github.com/vishvananda/netns"

	"github.com/traverse-rtc/traverse/internal/mediaproxy/offloadtest"
)

// lab is the offload test lab (package offloadtest) under the short names
// these tests use.
type lab struct {
	*offloadtest.Lab
	client, gw, server netns.NsHandle
}

var (
	clientIP  = offloadtest.ClientIP
	outsideIP = offloadtest.OutsideIP
	insideIP  = offloadtest.InsideIP
	serverIP  = offloadtest.ServerIP
)

func newLab(t *testing.T) *lab {
	l := offloadtest.New(t, true)
	return &lab{Lab: l, client: l.Client, gw: l.Gateway, server: l.Server}
}

func (l *lab) in(t *testing.T, ns netns.NsHandle, f func()) { l.In(t, ns, f) }
