//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package udpio

import (
	"net/netip"
	"testing"
	"time"
)

// TestRecvErrPortUnreachable sends from a socket with RecvErr to a
// loopback port nothing listens on: the kernel's ICMP port unreachable
// wakes the set and RecvErr returns it with the datagram's destination.
func TestRecvErrPortUnreachable(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		bind, network := netip.MustParseAddrPort("127.0.0.1:0"), "udp4"
		if v6 {
			bind, network = netip.MustParseAddrPort("[::1]:0"), "udp6"
		}
		gone := listen(t, network, bind.String())
		dead := gone.LocalAddr()
		gone.Close() // the port is now free: nothing listens there
		fd, _, err := OpenFD(bind, FDOptions{V6: v6, RecvErr: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { CloseFD(fd) })
		s, err := NewSet(0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		if err := s.Add(fd, 1); err != nil {
			t.Fatal(err)
		}
		b := NewBatch(0)
		if _, ok := b.RecvErr(fd); ok {
			t.Fatal("RecvErr on an empty queue returned an entry")
		}
		var sa Sockaddr
		sa.Set(dead, v6)
		if err := SendTo(fd, []byte("x"), &sa); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			if time.Now().After(deadline) {
				t.Fatalf("v6=%v: no error queued", v6)
			}
			evs, err := s.Wait(100)
			if err != nil {
				t.Fatal(err)
			}
			if len(evs) == 0 {
				continue
			}
			if n := b.Recv(fd, NewMessages(1, 0)); n != 0 {
				t.Fatalf("Recv read %d datagrams", n)
			}
			e, ok := b.RecvErr(fd)
			if !ok {
				continue
			}
			if e.Dst != dead || !e.PortUnreachable() {
				t.Fatalf("v6=%v: RecvErr = %+v, want port unreachable from %v", v6, e, dead)
			}
			break
		}
		if evs, _ := s.Wait(0); len(evs) != 0 {
			t.Fatalf("v6=%v: socket still reported after the queue was drained", v6)
		}
	}
}
