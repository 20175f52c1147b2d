package distribute

import (
	"net/netip"
	"testing"

	"github.com/traverse-rtc/traverse/internal/udpio"
)

// FuzzRoute feeds any datagram to the data path, from a stranger and from
// a receiver: no panic, and a datagram is either distributed to every
// receiver or counted once as dropped or feedback.
func FuzzRoute(f *testing.F) {
	for _, b := range [][]byte{rtpPacket(42, 1), rtpPacket(7, 2), rtcpRR(42), {0x80, 200, 0, 6, 0, 0, 0, 42}, {0x80, 96, 0}, {0, 1, 0, 0}, {}} {
		f.Add(b, false)
		f.Add(b, true)
	}
	dst := netip.MustParseAddrPort("127.0.0.1:5004")
	rcv := netip.MustParseAddrPort("192.0.2.1:6000")
	tab := newTable([]netip.AddrPort{dst}, 10, 10, nil)
	if err := tab.AddStream(Stream{Key: StreamKey{Dst: dst, SSRC: 42, HasSSRC: true}, Receivers: []netip.AddrPort{rcv, netip.MustParseAddrPort("192.0.2.2:6000")}}); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte, fromReceiver bool) {
		sent := 0
		p := newPath(1, func(out []udpio.Message) { sent += len(out) })
		m := udpio.NewMessages(1, 0)
		m[0].N = copy(m[0].Buf, b)
		m[0].Addr = netip.MustParseAddrPort("198.51.100.1:4000")
		if fromReceiver {
			m[0].Addr = rcv
		}
		p.route(&tab.load().ports[0], m, 1)
		sent += len(p.out)
		c := p.c
		total := c.in + c.feedback
		for _, d := range c.drops {
			total += d
		}
		if total != 1 || uint64(sent) != 2*c.in || c.out != uint64(sent) {
			t.Fatalf("%x: counted %+v, sent %d copies", b, c, sent)
		}
	})
}
