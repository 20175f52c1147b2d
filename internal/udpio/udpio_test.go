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

func listen(t testing.TB, network, addr string) *Conn {
	t.Helper()
	c, err := Listen(context.Background(), network, addr, Options{})
	if err != nil {
		t.Skipf("cannot listen on %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// sendTo returns count messages of n bytes each, addressed to to.
func sendTo(count, n int, to netip.AddrPort) []Message {
	msgs := NewMessages(count, 0)
	for i := range msgs {
		msgs[i].N = n
		msgs[i].Addr = to
	}
	return msgs
}

func TestBatchRoundTrip(t *testing.T) {
	for _, tc := range []struct{ network, addr string }{
		{"udp4", "127.0.0.1:0"},
		{"udp6", "[::1]:0"},
		{"udp", "[::]:0"}, // dual stack: IPv4 peers appear unmapped
	} {
		t.Run(tc.addr, func(t *testing.T) {
			srv := listen(t, tc.network, tc.addr)
			cliAddr := "127.0.0.1:0"
			target := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), srv.LocalAddr().Port())
			if tc.network == "udp6" {
				cliAddr = "[::1]:0"
				target = netip.AddrPortFrom(netip.IPv6Loopback(), srv.LocalAddr().Port())
			}
			cli := listen(t, "udp", cliAddr)
			const count = 10
			out := NewMessages(count, 0)
			for i := range out {
				out[i].N = copy(out[i].Buf, fmt.Sprintf("packet %d", i))
				out[i].Addr = target
			}
			n, err := cli.WriteBatch(out)
			if err != nil || n != count {
				t.Fatalf("WriteBatch = %d, %v", n, err)
			}
			in := NewMessages(count, 0)
			got := 0
			srv.UDPConn().SetReadDeadline(time.Now().Add(5 * time.Second))
			for got < count {
				n, err := srv.ReadBatch(in[got:])
				if err != nil {
					t.Fatalf("ReadBatch: %v", err)
				}
				for i := got; i < got+n; i++ {
					if want := fmt.Sprintf("packet %d", i); string(in[i].Payload()) != want {
						t.Errorf("message %d = %q, want %q", i, in[i].Payload(), want)
					}
					if in[i].Addr.Port() != cli.LocalAddr().Port() || in[i].Addr.Addr().Is4In6() {
						t.Errorf("message %d from %v, want port %d unmapped", i, in[i].Addr, cli.LocalAddr().Port())
					}
				}
				got += n
			}
			// Echo back in one batch to the learned addresses.
			if n, err := srv.WriteBatch(in[:count]); err != nil || n != count {
				t.Fatalf("echo WriteBatch = %d, %v", n, err)
			}
			buf := make([]byte, 100)
			cli.UDPConn().SetReadDeadline(time.Now().Add(5 * time.Second))
			for i := 0; i < count; i++ {
				if _, _, err := cli.ReadFrom(buf); err != nil {
					t.Fatalf("echo %d: %v", i, err)
				}
			}
		})
	}
}

func TestWrongFamilySkipped(t *testing.T) {
	c := listen(t, "udp4", "127.0.0.1:0")
	peer := listen(t, "udp4", "127.0.0.1:0")
	msgs := sendTo(3, 1, peer.LocalAddr())
	msgs[1].Addr = netip.MustParseAddrPort("[2001:db8::1]:9")
	n, err := c.WriteBatch(msgs)
	if n != 2 || !errors.Is(err, ErrAddrFamily) {
		t.Fatalf("WriteBatch = %d, %v; want 2, ErrAddrFamily", n, err)
	}
}

func TestCloseUnblocksRead(t *testing.T) {
	c := listen(t, "udp4", "127.0.0.1:0")
	errc := make(chan error, 1)
	go func() {
		_, err := c.ReadBatch(NewMessages(4, 0))
		errc <- err
	}()
	time.Sleep(10 * time.Millisecond) // let the reader block; correctness does not depend on it
	c.Close()
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("ReadBatch after Close = %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReadBatch still blocked after Close")
	}
}

func TestListenGroupSharesPort(t *testing.T) {
	conns, err := ListenGroup(context.Background(), "udp4", "127.0.0.1:0", 3, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for _, c := range conns[1:] {
		if c.LocalAddr() != conns[0].LocalAddr() {
			t.Errorf("socket on %v, want %v", c.LocalAddr(), conns[0].LocalAddr())
		}
	}
}

func TestNoAllocs(t *testing.T) {
	a := listen(t, "udp4", "127.0.0.1:0")
	b := listen(t, "udp4", "127.0.0.1:0")
	out := sendTo(8, 100, b.LocalAddr())
	in := NewMessages(8, 0)
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := a.WriteBatch(out); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < len(out); {
			n, err := b.ReadBatch(in)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per batch round trip, want 0", allocs)
	}
}

func BenchmarkBatch(b *testing.B) {
	for _, size := range []int{1, 8, 32} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			x := listen(b, "udp4", "127.0.0.1:0")
			y := listen(b, "udp4", "127.0.0.1:0")
			out := sendTo(size, 172, y.LocalAddr())
			in := NewMessages(size, 0)
			b.ReportAllocs()
			b.SetBytes(int64(172 * size))
			for b.Loop() {
				if _, err := x.WriteBatch(out); err != nil {
					b.Fatal(err)
				}
				for got := 0; got < size; {
					n, err := y.ReadBatch(in)
					if err != nil {
						b.Fatal(err)
					}
					got += n
				}
			}
		})
	}
}
