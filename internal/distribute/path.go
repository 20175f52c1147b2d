package distribute

import (
	"net/netip"

	"github.com/traverse-rtc/traverse/internal/udpio"
)

// Why a received datagram was not distributed.
const (
	dropNotMedia = iota // not RTP or RTCP
	dropNoStream        // no stream for its port and SSRC
	dropSource          // a sender other than the stream's source
	numDrops
)

var dropNames = [numDrops]string{"not_media", "no_stream", "source"}

// counts are a loop's counters for one batch, added to the metrics once
// per batch rather than per packet.
type counts struct {
	in, inBytes     uint64 // distributed datagrams received
	out, outBytes   uint64 // copies queued for sending
	feedback        uint64 // RTCP from receivers
	drops           [numDrops]uint64
	sent, sendDrops uint64 // what sendmmsg took and refused
}

// path is one loop's data-path state. out's capacity is fixed at
// construction, so routing a batch allocates nothing; when it fills,
// flush sends it and it is reused.
type path struct {
	out   []udpio.Message
	flush func(out []udpio.Message)
	c     counts
}

func newPath(outCap int, flush func([]udpio.Message)) *path {
	return &path{out: make([]udpio.Message, 0, max(outCap, 1)), flush: flush}
}

// route distributes one batch read from the socket of pv at time now
// (unix ns): every copy shares the received buffer. It leaves the last
// copies in p.out for the caller to flush.
func (p *path) route(pv *portView, msgs []udpio.Message, now int64) {
	for i := range msgs {
		m := &msgs[i]
		b := m.Buf[:m.N]
		k, ssrc := classify(b)
		if k == kindOther {
			p.c.drops[dropNotMedia]++
			continue
		}
		if k == kindRTCP {
			if rs, ok := pv.receivers[m.Addr]; ok {
				for _, r := range rs {
					r.lastHeard.Store(now)
					r.unreachSince.Store(0)
				}
				p.c.feedback++
				continue
			}
		}
		s := pv.bySSRC[ssrc]
		if s == nil {
			if s = pv.any; s == nil {
				p.c.drops[dropNoStream]++
				continue
			}
		}
		if s.source.IsValid() && s.source != m.Addr.Addr() {
			p.c.drops[dropSource]++
			continue
		}
		// One loop writes these counters (readers only load them), so a
		// load and a store replace the locked read-modify-write of Add
		// (one per copy and counter: three per receiver and packet).
		n := uint64(m.N)
		s.st.packets.Store(s.st.packets.Load() + 1)
		s.st.bytes.Store(s.st.bytes.Load() + n)
		s.st.lastSeen.Store(now)
		p.c.in++
		p.c.inBytes += n
		for _, r := range s.receivers {
			if len(p.out) == cap(p.out) {
				p.flush(p.out)
				p.out = p.out[:0]
			}
			p.out = append(p.out, udpio.Message{Buf: m.Buf, N: m.N, Addr: r.addr})
			r.packets.Store(r.packets.Load() + 1)
			r.bytes.Store(r.bytes.Load() + n)
			r.lastSent.Store(now)
		}
		p.c.out += uint64(len(s.receivers))
		p.c.outBytes += n * uint64(len(s.receivers))
	}
}

// unreachable records an ICMP port unreachable for dst, a receiver fed
// from the socket of pv.
func (p *path) unreachable(pv *portView, dst netip.AddrPort, now int64) {
	for _, r := range pv.receivers[dst] {
		r.unreachable.Add(1)
		r.unreachSince.CompareAndSwap(0, now)
	}
}
