//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package udpio

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

// readWithin is ReadBatch on c, failing the test when it takes over d (a
// ThreadWait socket has no read deadline).
func readWithin(t *testing.T, c *Conn, msgs []Message, d time.Duration) int {
	t.Helper()
	type res struct {
		n   int
		err error
	}
	ch := make(chan res, 1)
	go func() {
		n, err := c.ReadBatch(msgs)
		ch <- res{n, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("ReadBatch: %v", r.err)
		}
		return r.n
	case <-time.After(d):
		c.Close()
		t.Fatalf("ReadBatch did not return within %v", d)
		return 0
	}
}

// A ThreadWait socket (outside Go's netpoller) reads and writes as a
// netpoller one does: batches both ways, coalesced runs, single
// datagrams, over IPv4, IPv6 and dual stack; a read after a short one
// (which waits first) still gets what arrives later.
func TestThreadWaitRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		network, addr string
		coalesce      bool
	}{
		{"udp4", "127.0.0.1:0", false},
		{"udp4", "127.0.0.1:0", true},
		{"udp6", "[::1]:0", false},
		{"udp", "[::]:0", true},
	} {
		t.Run(fmt.Sprintf("%s-%s-coalesce=%v", tc.network, tc.addr, tc.coalesce), func(t *testing.T) {
			srv, err := Listen(context.Background(), tc.network, tc.addr, Options{ThreadWait: true, Coalesce: tc.coalesce})
			if err != nil {
				t.Skipf("cannot listen on %s %s: %v", tc.network, tc.addr, err)
			}
			t.Cleanup(func() { srv.Close() })
			if srv.th == nil || srv.UDPConn() != nil {
				t.Fatal("Options.ThreadWait did not open a socket outside the netpoller")
			}
			if srv.LocalAddr().Port() == 0 {
				t.Fatalf("LocalAddr %v: no port", srv.LocalAddr())
			}
			cliAddr, target := "127.0.0.1:0", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), srv.LocalAddr().Port())
			if tc.network == "udp6" {
				cliAddr, target = "[::1]:0", netip.AddrPortFrom(netip.IPv6Loopback(), srv.LocalAddr().Port())
			}
			cli := listen(t, "udp", cliAddr)
			size := 0
			if tc.coalesce {
				size = MaxCoalesced
			}
			in := NewMessages(8, size)
			for round := range 3 { // round 1 and 2 follow a short read
				const count = 5
				out := NewMessages(count, 0)
				for i := range out {
					out[i].N = copy(out[i].Buf, fmt.Sprintf("r%d packet %d", round, i))
					out[i].Addr = target
				}
				if n, err := cli.WriteBatch(out); err != nil || n != count {
					t.Fatalf("WriteBatch = %d, %v", n, err)
				}
				var got []string
				for len(got) < count {
					n := readWithin(t, srv, in, 5*time.Second)
					for i := range in[:n] {
						if in[i].Addr.Port() != cli.LocalAddr().Port() || in[i].Addr.Addr().Is4In6() {
							t.Errorf("from %v, want port %d unmapped", in[i].Addr, cli.LocalAddr().Port())
						}
						for b, off := in[i].Datagram(0); len(b) > 0; b, off = in[i].Datagram(off) {
							got = append(got, string(b))
						}
					}
				}
				for i, g := range got {
					if want := fmt.Sprintf("r%d packet %d", round, i); g != want {
						t.Errorf("datagram %d = %q, want %q", i, g, want)
					}
				}
			}
			// back: a batch to the learned address, then one datagram
			in[0].N = copy(in[0].Buf, "batch back")
			in[0].Seg = 0
			if n, err := srv.WriteBatch(in[:1]); err != nil || n != 1 {
				t.Fatalf("WriteBatch back = %d, %v", n, err)
			}
			if err := srv.WriteTo([]byte("one back"), in[0].Addr); err != nil {
				t.Fatalf("WriteTo: %v", err)
			}
			buf := make([]byte, 64)
			cli.UDPConn().SetReadDeadline(time.Now().Add(5 * time.Second))
			for _, want := range []string{"batch back", "one back"} {
				n, _, err := cli.ReadFrom(buf)
				if err != nil || string(buf[:n]) != want {
					t.Fatalf("client read %q, %v; want %q", buf[:n], err, want)
				}
			}
			// ReadFrom on the ThreadWait socket
			if err := cli.WriteTo([]byte("single"), target); err != nil {
				t.Fatal(err)
			}
			n, from, err := srv.ReadFrom(buf)
			if err != nil || string(buf[:n]) != "single" || from.Port() != cli.LocalAddr().Port() {
				t.Fatalf("ReadFrom = %q from %v, %v", buf[:n], from, err)
			}
		})
	}
}

// Close wakes a reader blocked in the ThreadWait socket's epoll_wait
// (net.ErrClosed), is idempotent, and every call after it fails with
// net.ErrClosed.
func TestThreadWaitClose(t *testing.T) {
	c, err := Listen(context.Background(), "udp4", "127.0.0.1:0", Options{ThreadWait: true})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.ReadBatch(NewMessages(4, 0))
		errc <- err
	}()
	// the reader is blocked (nothing was sent); Close must wake it
	time.AfterFunc(50*time.Millisecond, func() { c.Close() })
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("blocked ReadBatch after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake the blocked ReadBatch")
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	to := netip.MustParseAddrPort("127.0.0.1:9")
	if err := c.WriteTo([]byte("x"), to); !errors.Is(err, net.ErrClosed) {
		t.Errorf("WriteTo after Close: %v", err)
	}
	if _, err := c.WriteBatch(sendTo(2, 10, to)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("WriteBatch after Close: %v", err)
	}
	if _, err := c.ReadBatch(NewMessages(1, 0)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("ReadBatch after Close: %v", err)
	}
}

// A name, not a numeric address, is refused with ThreadWait (it binds
// without a resolver).
func TestThreadWaitNeedsNumericAddr(t *testing.T) {
	if c, err := Listen(context.Background(), "udp4", "localhost:0", Options{ThreadWait: true}); err == nil {
		c.Close()
		t.Fatal("ThreadWait listened on a host name")
	}
}
