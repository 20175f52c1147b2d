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
	seq   uint16
	valid bool
	hdr   rtp.Header // without extensions (they are stripped when forwarding)
	n     int
	buf   [1500]byte
}

// put stores a copy of pkt's payload.
func (c *packetCache) put(pkt *rtp.Packet) {
	if len(pkt.Payload) > 1500 {
		return
	}
	c.mu.Lock()
	s := &c.slots[pkt.SequenceNumber%cacheSize]
	s.seq, s.valid = pkt.SequenceNumber, true
	s.hdr = pkt.Header
	s.hdr.Extension, s.hdr.Extensions, s.hdr.ExtensionProfile = false, nil, 0
	s.n = copy(s.buf[:], pkt.Payload)
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
	n := copy(buf, s.buf[:s.n])
	return s.hdr, buf[:n], true
}
