package batchconn

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/udpio"
)

// newConnAndSink returns a Conn on a loopback port and a plain socket to
// send to; t.Cleanup closes both.
func newConnAndSink(t *testing.T) (*Conn, *net.UDPConn) {
	t.Helper()
	uc, err := udpio.Listen(context.Background(), "udp", "127.0.0.1:0", udpio.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := New(uc)
	t.Cleanup(func() { b.Close() })
	rc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	return b, rc
}

// TestBatchConnCork: writes between cork and uncork leave in one sendmmsg
// batch, in order, without allocating; writes outside a cork go straight
// out.
func TestBatchConnCork(t *testing.T) {
	b, rc := newConnAndSink(t)
	to := rc.LocalAddr().(*net.UDPAddr).AddrPort()
	p := make([]byte, 100)
	write := func(i byte) {
		p[0] = i
		if _, err := b.WriteToAddrPort(p, to); err != nil {
			t.Fatal(err)
		}
	}
	write(0)
	if b.batches.Load() != 1 || len(b.pending) != 0 {
		t.Fatal("an uncorked write did not go straight out")
	}
	b.Cork()
	for i := range 10 {
		write(byte(1 + i))
	}
	if n := len(b.pending); n != 10 {
		t.Fatalf("%d queued while corked, want 10", n)
	}
	b.Uncork()
	if b.batches.Load() != 2 || b.writes.Load() != 11 {
		t.Fatalf("%d batches for %d datagrams, want 2 for 11", b.batches.Load(), b.writes.Load())
	}
	got := make([]byte, 200)
	_ = rc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i := range 11 {
		n, err := rc.Read(got)
		if err != nil || n != 100 || got[0] != byte(i) {
			t.Fatalf("datagram %d: %d bytes, first %d, %v", i, n, got[0], err)
		}
	}
	if a := testing.AllocsPerRun(100, func() {
		b.Cork()
		for i := range 20 {
			write(byte(i))
		}
		b.Uncork()
	}); a != 0 {
		t.Errorf("a corked fan-out of 20: %v allocations", a)
	}
}

// fanout is an Interceptor that takes every datagram but the 20-byte ones
// and fans each out twice through the Conn, as the SFU's own receive
// path does.
type fanout struct {
	b  *Conn
	to netip.AddrPort
}

func (f *fanout) Active() bool { return true }

func (f *fanout) Intercept(m *udpio.Message, _ int64) bool {
	if m.N == 20 {
		return false
	}
	for range 2 {
		_, _ = f.b.WriteToAddrPort(m.Payload(), f.to)
	}
	return true
}

// TestInterceptBatchCork: the fan-outs of every datagram of one recvmmsg
// batch leave in one sendmmsg, and the taken datagrams are not returned
// to the reader (pion's mux).
func TestInterceptBatchCork(t *testing.T) {
	b, sink := newConnAndSink(t)
	b.SetInterceptor(&fanout{b: b, to: sink.LocalAddr().(*net.UDPAddr).AddrPort()})
	src, err := net.DialUDP("udp", nil, b.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	// Loopback queues each datagram before its send returns: one read
	// takes all five.
	for i := range 4 {
		if _, err := src.Write(make([]byte, 100+i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := src.Write(make([]byte, 20)); err != nil { // STUN-like: the reader's
		t.Fatal(err)
	}
	st := b.Stats()
	p := make([]byte, 1500)
	_ = b.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := b.ReadFromAddrPort(p)
	if err != nil || n != 20 || from != src.LocalAddr().(*net.UDPAddr).AddrPort() {
		t.Fatalf("the reader got %d bytes from %v (%v), want the 20-byte datagram", n, from, err)
	}
	if now := b.Stats(); now.Writes-st.Writes != 8 || now.Batches-st.Batches != 1 {
		t.Fatalf("%d datagrams in %d send calls, want 8 in 1", now.Writes-st.Writes, now.Batches-st.Batches)
	}
}
