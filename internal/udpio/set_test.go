//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package udpio

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

var lo4 = netip.MustParseAddr("127.0.0.1")

func TestSockaddrRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		in   string
		v6   bool
		ok   bool
		want string
	}{
		{"127.0.0.1:3478", false, true, "127.0.0.1:3478"},
		{"127.0.0.1:3478", true, true, "127.0.0.1:3478"}, // mapped on the wire, unmapped back
		{"[::ffff:10.0.0.1]:5", false, true, "10.0.0.1:5"},
		{"[2001:db8::1]:65535", true, true, "[2001:db8::1]:65535"},
		{"[2001:db8::1]:1", false, false, ""},
	} {
		var sa Sockaddr
		ok := sa.Set(netip.MustParseAddrPort(tc.in), tc.v6)
		if ok != tc.ok {
			t.Fatalf("Set(%s, v6=%v) = %v", tc.in, tc.v6, ok)
		}
		if ok && sa.AddrPort().String() != tc.want {
			t.Fatalf("Set(%s, v6=%v) decodes as %s, want %s", tc.in, tc.v6, sa.AddrPort(), tc.want)
		}
	}
	var sa Sockaddr
	if sa.Set(netip.AddrPort{}, true) || sa.AddrPort().IsValid() {
		t.Fatal("the zero address encodes")
	}
}

// openSet opens a set with n UDP sockets on loopback, tagged 1..n.
func openSet(t *testing.T, n int) (*Set, []int, []netip.AddrPort) {
	t.Helper()
	s, err := NewSet(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	var fds []int
	var addrs []netip.AddrPort
	for i := 0; i < n; i++ {
		fd, a, err := OpenFD(netip.AddrPortFrom(lo4, 0), FDOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { CloseFD(fd) })
		if err := s.Add(fd, uint32(i+1)); err != nil {
			t.Fatal(err)
		}
		fds, addrs = append(fds, fd), append(addrs, a)
	}
	return s, fds, addrs
}

// TestSetDrainsAndFlushes sends to several sockets of a set, drains the
// ready ones in batches and answers from each in one sendmmsg.
func TestSetDrainsAndFlushes(t *testing.T) {
	const socks, per = 4, 5
	s, fds, addrs := openSet(t, socks)
	peer := listen(t, "udp4", "127.0.0.1:0")
	out := NewMessages(socks*per, 0)
	for i := range out {
		out[i].N = copy(out[i].Buf, []byte{byte(i % socks), byte(i / socks)})
		out[i].Addr = addrs[i%socks]
	}
	if n, err := peer.WriteBatch(out); n != len(out) || err != nil {
		t.Fatalf("WriteBatch = %d, %v", n, err)
	}
	in := NewMessages(DefaultBatch, 0)
	b := NewBatch(0)
	got := make([]int, socks)
	deadline := time.Now().Add(5 * time.Second)
	for total := 0; total < socks*per; {
		if time.Now().After(deadline) {
			t.Fatalf("read %d of %d datagrams (per socket %v)", total, socks*per, got)
		}
		evs, err := s.Wait(100)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs {
			i := int(ev.Tag()) - 1
			if i < 0 || i >= socks || ev.FD() != fds[i] || !ev.Readable() || ev.Writable() {
				t.Fatalf("event fd %d tag %d", ev.FD(), ev.Tag())
			}
			n := b.Recv(ev.FD(), in)
			for _, m := range in[:n] {
				if m.N != 2 || int(m.Buf[0]) != i || m.Addr != peer.LocalAddr() {
					t.Fatalf("socket %d read %v from %v", i, m.Payload(), m.Addr)
				}
				m.Addr = peer.LocalAddr()
			}
			// Echo the batch back from the same socket.
			if sent, dropped := b.Send(ev.FD(), false, in[:n]); sent != n || dropped != 0 {
				t.Fatalf("Send = %d sent, %d dropped, want %d", sent, dropped, n)
			}
			got[i] += n
			total += n
		}
	}
	peer.UDPConn().SetReadDeadline(time.Now().Add(5 * time.Second))
	back := NewMessages(DefaultBatch, 0)
	for n := 0; n < socks*per; {
		k, err := peer.ReadBatch(back)
		if err != nil {
			t.Fatalf("echo: %v after %d", err, n)
		}
		n += k
	}
	// A wrong-family destination is dropped, the rest still goes.
	out[0].Addr = netip.MustParseAddrPort("[2001:db8::1]:9")
	out[1].Addr = peer.LocalAddr()
	if sent, dropped := b.Send(fds[0], false, out[:2]); sent != 1 || dropped != 1 {
		t.Fatalf("Send = %d sent, %d dropped, want 1, 1", sent, dropped)
	}
}

// TestSetStop checks that Stop ends every kind of wait, and that Remove
// stops reports.
func TestSetStop(t *testing.T) {
	s, fds, addrs := openSet(t, 1)
	peer := listen(t, "udp4", "127.0.0.1:0")
	s.Remove(fds[0])
	if err := peer.WriteTo([]byte("x"), addrs[0]); err != nil {
		t.Fatal(err)
	}
	if evs, err := s.Wait(50); err != nil || len(evs) != 0 {
		t.Fatalf("removed socket reported: %v, %v", evs, err)
	}
	done := make(chan error, 2)
	go func() { _, err := s.Poll(); done <- err }()
	go func() {
		if evs := s.Park(); len(evs) > 0 {
			done <- fmt.Errorf("Park returned %d events", len(evs))
			return
		}
		done <- nil
	}()
	s.Stop()
	for i := 0; i < 2; i++ {
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, net.ErrClosed) {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a wait did not end on Stop")
		}
	}
	if evs, _ := s.Wait(0); len(evs) != 0 || !s.Stopped() {
		t.Fatalf("after Stop: %v events, stopped %v", len(evs), s.Stopped())
	}
}

// TestSetPoll checks the netpoller wait reports a ready socket.
func TestSetPoll(t *testing.T) {
	s, fds, addrs := openSet(t, 2)
	peer := listen(t, "udp4", "127.0.0.1:0")
	if err := peer.WriteTo([]byte("x"), addrs[1]); err != nil {
		t.Fatal(err)
	}
	for _, wait := range []func() []Event{
		func() []Event { evs, _ := s.Poll(); return evs },
		s.Park,
	} {
		evs := wait()
		if len(evs) != 1 || evs[0].FD() != fds[1] || evs[0].Tag() != 2 {
			t.Fatalf("events %v", evs)
		}
	}
}

// TestSetNoAllocs checks the loop's hot path: wait, read a batch, send it.
func TestSetNoAllocs(t *testing.T) {
	s, fds, addrs := openSet(t, 1)
	peer := listen(t, "udp4", "127.0.0.1:0")
	b := NewBatch(8)
	in := NewMessages(8, 0)
	var sa Sockaddr
	sa.Set(addrs[0], false)
	ping := []byte("ping")
	round := func() {
		if err := SendTo(fds[0], ping, &sa); err != nil { // to itself
			t.Fatal(err)
		}
		for {
			evs, err := s.Wait(1000)
			if err != nil || len(evs) != 1 {
				t.Fatalf("events %v, %v", evs, err)
			}
			if n := b.Recv(evs[0].FD(), in); n > 0 {
				in[0].Addr = peer.LocalAddr()
				b.Send(fds[0], false, in[:n])
				return
			}
		}
	}
	round()
	if a := testing.AllocsPerRun(200, round); a != 0 {
		t.Fatalf("%v allocations per round", a)
	}
}

func TestOpenFDAddrInUse(t *testing.T) {
	fd, a, err := OpenFD(netip.AddrPortFrom(lo4, 0), FDOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer CloseFD(fd)
	if a.Port() == 0 || a.Addr() != lo4 {
		t.Fatalf("bound %v", a)
	}
	if _, _, err := OpenFD(a, FDOptions{}); !errors.Is(err, ErrAddrInUse) {
		t.Fatalf("second bind: %v", err)
	}
	if _, _, err := OpenFD(netip.MustParseAddrPort("[::1]:0"), FDOptions{}); !errors.Is(err, ErrAddrFamily) {
		t.Fatalf("IPv6 on AF_INET: %v", err)
	}
}

// TestRawSender sends from a port it does not own (needs CAP_NET_RAW).
func TestRawSender(t *testing.T) {
	r, err := NewRawSender(4)
	if err != nil {
		t.Skipf("no raw socket: %v", err)
	}
	defer r.Close()
	dst := listen(t, "udp4", "127.0.0.1:0")
	src := netip.AddrPortFrom(lo4, 40999)
	payload := []byte("raw payload")
	if i, ok := r.Add(payload, src, dst.LocalAddr()); !ok || i != 0 {
		t.Fatalf("Add = %d, %v", i, ok)
	}
	if _, ok := r.Add(payload, netip.MustParseAddrPort("[::1]:1"), dst.LocalAddr()); ok {
		t.Fatal("IPv6 source queued")
	}
	if n, failed := r.Flush(); n != 1 || failed != 0 || !r.Sent(0) {
		t.Fatalf("Flush = %d, %d failed", n, failed)
	}
	buf := make([]byte, 100)
	dst.UDPConn().SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := dst.ReadFrom(buf)
	if err != nil || string(buf[:n]) != string(payload) || from != src {
		t.Fatalf("read %q from %v: %v", buf[:n], from, err)
	}
	once := func() {
		r.Add(payload, src, dst.LocalAddr())
		r.Flush()
	}
	if a := testing.AllocsPerRun(100, once); a != 0 {
		t.Fatalf("%v allocations per packet", a)
	}
}

// BenchmarkRawBatch is one datagram of 172 bytes sent with Batch.Send and
// read back with Batch.Recv between two raw non-blocking sockets: the
// shape of a TURN event loop's round under RTP load (one packet per call).
func BenchmarkRawBatch(b *testing.B) {
	x, _, err := OpenFD(netip.AddrPortFrom(lo4, 0), FDOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer CloseFD(x)
	y, ya, err := OpenFD(netip.AddrPortFrom(lo4, 0), FDOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer CloseFD(y)
	out := NewMessages(1, 0)
	out[0].N, out[0].Addr = 172, ya
	in := NewMessages(64, 0)
	sb, rb := NewBatch(1), NewBatch(64)
	b.ReportAllocs()
	for b.Loop() {
		if sent, _ := sb.Send(x, false, out); sent != 1 {
			b.Fatal("not sent")
		}
		if rb.Recv(y, in) != 1 {
			b.Fatal("not received")
		}
	}
}
