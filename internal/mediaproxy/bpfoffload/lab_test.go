//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpfoffload

import (
	"testing"

	"github.com/vishvananda/netns"

	"github.com/traverse-rtc/traverse/internal/mediaproxy/offloadtest"
)

// lab is the offload test lab (package offloadtest) under the short names
// these tests use. The gateway does NOT forward IPv4 (ip_forward=0):
// whatever reaches the far side and did not come from the proxy's sockets
// went through the eBPF program.
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
	l := offloadtest.New(t, false)
	return &lab{Lab: l, client: l.Client, gw: l.Gateway, server: l.Server}
}

func (l *lab) in(t *testing.T, ns netns.NsHandle, f func()) { l.In(t, ns, f) }

// txChecksum: see offloadtest.Lab.TxChecksum.
func (l *lab) txChecksum(t *testing.T, ns netns.NsHandle, name string, on bool) {
	l.TxChecksum(t, ns, name, on)
}
