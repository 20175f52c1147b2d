package sfu

import (
	"sync"

	"github.com/pion/rtp"
)

// packetCache is one incoming layer's recent packets, shared by every
// subscriber of the track: a NACK from any subscriber is answered from it
// after mapping the subscriber's sequence number back to the publisher's.
// One copy per incoming packet, not one per subscriber (pion's NACK
// responder keeps a copy per outgoing stream).
type packetCache struct {
	mu    sync.Mutex // guards slots
	slots [cacheSize]cacheSlot
}

// cacheSize is the history per layer, a power of two: 512 packets is
// 2.5 s of 2 Mbit/s video.
const cacheSize = 512

type cacheSlot struct {
	seq    uint16
	valid  bool
	hdr    rtp.Header // without extensions (they are stripped when forwarding)
	off, n int        // the payload is buf[off:n]
	buf    [1500]byte
}

// claim returns the buffer of seq's slot, emptied, for the layer's
// receiver to decrypt the packet with sequence number seq into: the own
// receive path opens packets straight into the cache (recvpath.go), so
// caching them costs no copy (put finds them in place). The caller holds
// the layer's mutex until its put; until then a NACK for either packet of
// the slot goes unanswered.
func (c *packetCache) claim(seq uint16) []byte {
	s := &c.slots[seq%cacheSize]
	c.mu.Lock()
	s.valid = false
	c.mu.Unlock()
	return s.buf[:]
}

// put stores pkt, parsed from raw: when raw is what claim returned for
// pkt's sequence number, in place, else as a copy of its payload.
func (c *packetCache) put(pkt *rtp.Packet, raw []byte) {
	if len(pkt.Payload) > 1500 {
		return
	}
	s := &c.slots[pkt.SequenceNumber%cacheSize]
	c.mu.Lock()
	s.seq, s.valid = pkt.SequenceNumber, true
	s.hdr = pkt.Header
	s.hdr.Extension, s.hdr.Extensions, s.hdr.ExtensionProfile = false, nil, 0
	if len(raw) > 0 && &raw[0] == &s.buf[0] {
		// The payload is a slice of raw: its offset is the difference
		// of their capacities.
		s.off = cap(raw) - cap(pkt.Payload)
		s.n = s.off + len(pkt.Payload)
	} else {
		s.off, s.n = 0, copy(s.buf[:], pkt.Payload)
	}
	c.mu.Unlock()
}

// get copies the packet with sequence number seq into buf and returns its
// header and payload; ok is false when it is no longer (or never was)
// cached.
func (c *packetCache) get(seq uint16, buf []byte) (rtp.Header, []byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := &c.slots[seq%cacheSize]
	if !s.valid || s.seq != seq {
		return rtp.Header{}, nil, false
	}
	n := copy(buf, s.buf[s.off:s.n])
	return s.hdr, buf[:n], true
}
