//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package turn

import (
	"net"
	"testing"
)

// TestSocketRoom: a TLS frame goes straight to a connection's socket only
// when the socket surely takes it without blocking: an idle connection has
// room for a media frame, never for a frame near the size of its send
// buffer.
func TestSocketRoom(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if !socketRoom(rc, 200) {
		t.Error("no room for 200 bytes on an idle socket")
	}
	if socketRoom(rc, 8<<10) {
		t.Error("room for 8 KiB claimed: a write that large could block")
	}
}
