//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package udpio

import (
	"encoding/binary"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ctlSpace is the room for one UDP_SEGMENT (send) or UDP_GRO (receive)
// control message.
var ctlSpace = unix.CmsgSpace(4)

// maxSegments is the most datagrams one UDP_SEGMENT send may carry (the
// kernel's UDP_MAX_SEGMENTS on every kernel that has UDP GSO).
const maxSegments = 64

// coalesce is the state a Conn with Options.Coalesce keeps beside its
// mmsg headers: a control message per header, how many datagrams each
// header carries and which message each iovec is.
type coalesce struct {
	ctl   []byte
	count []int  // datagrams per header
	order []int  // message index per iovec
	taken []bool // message already placed (prepSendCoalesced)
}

func newCoalesce(n int) coalesce {
	return coalesce{ctl: make([]byte, n*ctlSpace), count: make([]int, n), order: make([]int, n), taken: make([]bool, n)}
}

// prepRecvGRO points header i's control buffer at slot i, where the kernel
// writes the segment size of a coalesced read.
func (m *mmsg) prepRecvGRO(c *coalesce, n int) {
	for i := 0; i < n; i++ {
		h := &m.hdrs[i].hdr
		h.Control = &c.ctl[i*ctlSpace]
		h.SetControllen(ctlSpace)
	}
}

// finishRecvGRO stores the segment size of each coalesced read (Seg), 0
// for a read of one datagram.
func (m *mmsg) finishRecvGRO(c *coalesce, msgs []Message, n int) {
	for i := 0; i < n; i++ {
		msgs[i].Seg = 0
		h := &m.hdrs[i].hdr
		if seg := groSize(c.ctl[i*ctlSpace : i*ctlSpace+int(h.Controllen)]); seg > 0 && seg < msgs[i].N {
			msgs[i].Seg = seg
		}
	}
}

// groSize reads the UDP_GRO control message in ctl: the size of each
// datagram in a coalesced read; 0 when there is none. It does not
// allocate (unix.ParseSocketControlMessage would).
func groSize(ctl []byte) int {
	for len(ctl) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&ctl[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(ctl) {
			return 0
		}
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && l >= unix.CmsgLen(2) {
			d := ctl[unix.CmsgLen(0):l]
			if len(d) >= 4 {
				return int(*(*int32)(unsafe.Pointer(&d[0])))
			}
			return int(*(*uint16)(unsafe.Pointer(&d[0])))
		}
		next := unix.CmsgSpace(l - unix.CmsgLen(0))
		if next > len(ctl) {
			return 0
		}
		ctl = ctl[next:]
	}
	return 0
}

// prepSendCoalesced is prepSend for a socket with UDP GSO: the messages
// to one address, taken in their order, go out in as few headers as
// possible, each a run of datagrams of one size (the last of a run may be
// shorter) that the kernel splits with UDP_SEGMENT. Headers follow the
// first appearance of each address; the order of the datagrams to one
// address is kept, the order between addresses is not.
func (m *mmsg) prepSendCoalesced(c *coalesce, msgs []Message, v6 bool) (valid, skipped int) {
	taken := c.taken[:len(msgs)]
	clear(taken)
	iv := 0
	for i := range msgs {
		if taken[i] {
			continue
		}
		taken[i] = true
		a := msgs[i].Addr
		if !m.names[valid].Set(a, v6) {
			skipped++
			continue
		}
		start, seg, total, closed := iv, msgs[i].N, msgs[i].N, false
		m.addIov(c, iv, msgs, i)
		iv++
		for j := i + 1; j < len(msgs); j++ {
			if taken[j] || msgs[j].Addr != a {
				continue
			}
			taken[j] = true
			n := msgs[j].N
			if closed || seg == 0 || n == 0 || n > seg || iv-start == maxSegments || total+n > MaxCoalesced {
				m.finishSend(c, valid, start, iv-start, seg)
				valid++
				m.names[valid] = m.names[valid-1]
				start, seg, total, closed = iv, n, 0, false
			} else if n < seg {
				closed = true
			}
			total += n
			m.addIov(c, iv, msgs, j)
			iv++
		}
		m.finishSend(c, valid, start, iv-start, seg)
		valid++
	}
	return valid, skipped
}

func (m *mmsg) addIov(c *coalesce, iv int, msgs []Message, i int) {
	b := msgs[i].Buf[:msgs[i].N]
	m.iov[iv].Base = unsafe.SliceData(b)
	m.iov[iv].SetLen(len(b))
	c.order[iv] = i
}

// finishSend makes header h the n datagrams from iovec start, of size seg
// (the last may be shorter).
func (m *mmsg) finishSend(c *coalesce, h, start, n, seg int) {
	hd := &m.hdrs[h].hdr
	hd.Name = (*byte)(unsafe.Pointer(&m.names[h].raw))
	hd.Namelen = m.names[h].n
	hd.Iov = &m.iov[start]
	hd.SetIovlen(n)
	hd.Flags = 0
	c.count[h] = n
	if n == 1 {
		hd.Control = nil
		hd.Controllen = 0
		return
	}
	ctl := c.ctl[h*ctlSpace : (h+1)*ctlSpace]
	clear(ctl)
	ch := (*unix.Cmsghdr)(unsafe.Pointer(&ctl[0]))
	ch.Level, ch.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	ch.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(ctl[unix.CmsgLen(0):], uint16(seg))
	hd.Control = &ctl[0]
	hd.SetControllen(unix.CmsgSpace(2))
}
