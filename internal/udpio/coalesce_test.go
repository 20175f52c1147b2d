//go:build linux

package udpio

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func listenOpts(t testing.TB, o Options) *Conn {
	t.Helper()
	c, err := Listen(context.Background(), "udp4", "127.0.0.1:0", o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// datagram is one datagram as a receiver saw it.
type datagram struct {
	from netip.AddrPort
	b    string
}

// readDatagrams reads want datagrams from c (splitting coalesced reads)
// and returns them and how many reads (Messages) carried them.
func readDatagrams(t *testing.T, c *Conn, want int) ([]datagram, int) {
	t.Helper()
	in := NewMessages(8, MaxCoalesced)
	var got []datagram
	reads := 0
	_ = c.UDPConn().SetReadDeadline(time.Now().Add(5 * time.Second))
	for len(got) < want {
		n, err := c.ReadBatch(in)
		if err != nil {
			t.Fatalf("after %d of %d datagrams: %v", len(got), want, err)
		}
		for i := range in[:n] {
			reads++
			for b, off := in[i].Datagram(0); len(b) > 0; b, off = in[i].Datagram(off) {
				got = append(got, datagram{in[i].Addr, string(b)})
			}
		}
	}
	return got, reads
}

// TestCoalesce: the same interleaved batch to two receivers, sent by a
// Conn with Options.Coalesce and by one without, read by a receiver with
// it and one without. Every datagram arrives whole, in its order per
// destination, whatever the sizes: runs of equal sizes, a shorter last
// one ending a run, a longer one after it starting the next. With
// coalescing on both ends the datagrams to one receiver arrive in fewer
// reads than datagrams (the kernel carried each run once).
func TestCoalesce(t *testing.T) {
	sizes := []int{100, 100, 100, 60, 100, 100, 7, 7, 300, 100}
	for _, tc := range []struct {
		name           string
		send, recv     bool
		wantFewerReads bool
	}{
		{"both", true, true, true},
		{"sender only", true, false, false},
		{"receiver only", false, true, false},
		{"neither", false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tx := listenOpts(t, Options{Coalesce: tc.send})
			rx := []*Conn{listenOpts(t, Options{Coalesce: tc.recv}), listenOpts(t, Options{Coalesce: tc.recv})}
			if r, w := tx.Coalescing(); r != tc.send || w != tc.send {
				t.Fatalf("sender Coalescing() = %v, %v, want %v", r, w, tc.send)
			}
			out := NewMessages(2*len(sizes), 0)
			want := [2][]datagram{}
			for i, size := range sizes {
				for d := range rx {
					m := &out[2*i+d]
					p := fmt.Sprintf("%d:%d:", d, i)
					for len(p) < size {
						p += string(rune('a' + i))
					}
					m.N = copy(m.Buf, p[:size])
					m.Addr = rx[d].LocalAddr()
					want[d] = append(want[d], datagram{tx.LocalAddr(), p[:size]})
				}
			}
			if n, err := tx.WriteBatch(out); err != nil || n != len(out) {
				t.Fatalf("WriteBatch = %d, %v; want %d", n, err, len(out))
			}
			for d := range rx {
				got, reads := readDatagrams(t, rx[d], len(want[d]))
				if fmt.Sprint(got) != fmt.Sprint(want[d]) {
					t.Fatalf("receiver %d got\n%v\nwant\n%v", d, got, want[d])
				}
				if tc.wantFewerReads != (reads < len(got)) {
					t.Fatalf("receiver %d: %d datagrams in %d reads", d, len(got), reads)
				}
				t.Logf("receiver %d: %d datagrams in %d reads", d, len(got), reads)
			}
		})
	}
}

// TestCoalesceFallback: a run the kernel refuses to segment (here
// SO_NO_CHECK, which UDP GSO cannot honour: EINVAL) goes out one datagram
// at a time, and every datagram still arrives.
func TestCoalesceFallback(t *testing.T) {
	tx := listenOpts(t, Options{Coalesce: true})
	rx := listenOpts(t, Options{})
	rc, err := tx.UDPConn().SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_NO_CHECK, 1) }); err != nil || serr != nil {
		t.Fatalf("SO_NO_CHECK: %v %v", err, serr)
	}
	out := NewMessages(5, 0)
	for i := range out {
		out[i].N = copy(out[i].Buf, fmt.Sprintf("datagram %d", i))
		out[i].Addr = rx.LocalAddr()
	}
	if n, err := tx.WriteBatch(out); n != len(out) || err != nil {
		t.Fatalf("WriteBatch = %d, %v; want %d", n, err, len(out))
	}
	got, _ := readDatagrams(t, rx, len(out))
	for i, g := range got {
		if want := fmt.Sprintf("datagram %d", i); g.b != want {
			t.Fatalf("datagram %d = %q, want %q", i, g.b, want)
		}
	}
	if tx.refused.Load() == 0 {
		t.Fatal("the kernel segmented the run despite SO_NO_CHECK: the fallback did not run")
	}
	if _, w := tx.Coalescing(); !w {
		t.Fatal("EINVAL turned GSO off for good (only EIO should)")
	}
}

// TestDatagramWalk: Datagram splits a coalesced read into its datagrams,
// the last shorter, and a read of one datagram into itself.
func TestDatagramWalk(t *testing.T) {
	for _, tc := range []struct {
		n, seg int
		want   []int
	}{
		{10, 0, []int{10}},
		{10, 4, []int{4, 4, 2}},
		{12, 4, []int{4, 4, 4}},
		{0, 0, nil},
	} {
		m := Message{Buf: make([]byte, 16), N: tc.n, Seg: tc.seg}
		var got []int
		for b, off := m.Datagram(0); len(b) > 0; b, off = m.Datagram(off) {
			got = append(got, len(b))
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("N %d Seg %d: %v, want %v", tc.n, tc.seg, got, tc.want)
		}
	}
}

// TestCoalesceNoAllocs: a coalesced WriteBatch and a GRO ReadBatch do not
// allocate.
func TestCoalesceNoAllocs(t *testing.T) {
	tx := listenOpts(t, Options{Coalesce: true})
	rx := listenOpts(t, Options{Coalesce: true, ReadBuffer: 4 << 20})
	out := NewMessages(8, 0)
	for i := range out {
		out[i].N, out[i].Addr = 500, rx.LocalAddr()
	}
	in := NewMessages(4, MaxCoalesced)
	allocs := testing.AllocsPerRun(100, func() {
		if n, err := tx.WriteBatch(out); n != len(out) || err != nil {
			t.Fatalf("WriteBatch = %d, %v", n, err)
		}
		if _, err := rx.ReadBatch(in); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per batch", allocs)
	}
}

// TestGROSize: the control message parser finds UDP_GRO's size among
// others and refuses lengths that overrun the buffer.
func TestGROSize(t *testing.T) {
	msg := func(level, typ int32, data []byte) []byte {
		b := make([]byte, unix.CmsgSpace(len(data)))
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		h.Level, h.Type = level, typ
		h.SetLen(unix.CmsgLen(len(data)))
		copy(b[unix.CmsgLen(0):], data)
		return b
	}
	gro := msg(unix.SOL_UDP, unix.UDP_GRO, binary.NativeEndian.AppendUint32(nil, 1000))
	other := msg(unix.SOL_IP, unix.IP_TTL, binary.NativeEndian.AppendUint32(nil, 64))
	bad := append([]byte(nil), gro...)
	(*unix.Cmsghdr)(unsafe.Pointer(&bad[0])).SetLen(len(bad) + 8)
	for name, tc := range map[string]struct {
		ctl  []byte
		want int
	}{
		"gro":         {gro, 1000},
		"after other": {append(append([]byte(nil), other...), gro...), 1000},
		"none":        {other, 0},
		"empty":       {nil, 0},
		"overrun":     {bad, 0},
		"cut":         {gro[:8], 0},
	} {
		if got := groSize(tc.ctl); got != tc.want {
			t.Errorf("%s: %d, want %d", name, got, tc.want)
		}
	}
}

// BenchmarkWriteBatchRuns is the sender's cost of a relay hop's batch on
// loopback: 64 datagrams of 1,100 bytes, 8 to each of 8 receivers that
// read as relay endpoints do (UDP GRO, never drained here: the cost is
// the send and the kernel's delivery), sent as 64 datagrams (plain) or as
// 8 runs (coalesce). ns/op is per datagram.
func BenchmarkWriteBatchRuns(b *testing.B) {
	for _, co := range []bool{false, true} {
		b.Run(map[bool]string{false: "plain", true: "coalesce"}[co], func(b *testing.B) {
			tx := listenOpts(b, Options{Coalesce: co})
			out := NewMessages(64, 0)
			for d := range 8 {
				rx := listenOpts(b, Options{Coalesce: true})
				for k := range 8 {
					out[8*k+d].N, out[8*k+d].Addr = 1100, rx.LocalAddr()
				}
			}
			b.ReportAllocs()
			b.SetBytes(1100)
			b.ResetTimer()
			for done := 0; done < b.N; done += len(out) {
				if n, err := tx.WriteBatch(out); n != len(out) || err != nil {
					b.Fatalf("WriteBatch = %d, %v", n, err)
				}
			}
		})
	}
}

// FuzzCoalescedRead: whatever control bytes the kernel returned and
// whatever sizes a read holds, the segment size parser does not panic or
// overrun, and Datagram walks the read into pieces of at most Seg bytes
// that put together are the read.
func FuzzCoalescedRead(f *testing.F) {
	f.Add([]byte{}, 100, 0)
	f.Add(binary.NativeEndian.AppendUint32(make([]byte, unix.CmsgLen(0)), 20), 100, 20)
	f.Fuzz(func(t *testing.T, ctl []byte, n, seg int) {
		if len(ctl) >= unix.SizeofCmsghdr {
			// keep the fuzzer's bytes 8-aligned, as the kernel's are
			ctl = append(make([]byte, 0, len(ctl)+8), ctl...)
		}
		_ = groSize(ctl)
		if n < 0 || n > 4096 || seg < 0 {
			return
		}
		buf := make([]byte, n)
		for i := range buf {
			buf[i] = byte(i)
		}
		m := Message{Buf: buf, N: n, Seg: seg}
		var joined []byte
		pieces := 0
		for b, off := m.Datagram(0); len(b) > 0; b, off = m.Datagram(off) {
			if seg > 0 && len(b) > seg {
				t.Fatalf("a piece of %d bytes, Seg %d", len(b), seg)
			}
			joined = append(joined, b...)
			if pieces++; pieces > n {
				t.Fatal("the walk does not end")
			}
		}
		if string(joined) != string(buf) {
			t.Fatalf("the pieces are not the read (N %d, Seg %d)", n, seg)
		}
	})
}
