package sfu

import (
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/srtp/v3"

	"github.com/traverse-rtc/traverse/internal/sfu/gcc"
)

// TestOwnPathTWCC: a subscriber that negotiated transport-cc gets every
// packet, retransmissions included, with the extension carrying
// consecutive transport-wide sequence numbers, each recorded in the
// estimator's ring with its wire size; nothing is allocated per packet; a
// packet that fits the MTU only without the extension is dropped and
// takes no sequence number.
func TestOwnPathTWCC(t *testing.T) {
	const extID = 5
	d, cache, rc, dec := newOwnTestDown(t, srtp.ProtectionProfileAeadAes128Gcm)
	cc := gcc.New(time.Now().UnixNano())
	d.sub.own.cc = cc
	d.mu.Lock()
	d.twccID = extID
	d.mu.Unlock()
	pkt := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 100, SequenceNumber: 100, Timestamp: 5000, SSRC: 1},
		Payload: make([]byte, 1000)}
	if err := pkt.SetExtension(3, []byte{1, 2}); err != nil { // the publisher's: must not leak
		t.Fatal(err)
	}
	tseq := func(p *rtp.Packet) uint16 {
		t.Helper()
		if len(p.GetExtensionIDs()) != 1 {
			t.Fatalf("extensions %v, want only %d", p.GetExtensionIDs(), extID)
		}
		e := p.GetExtension(extID)
		if len(e) != 2 {
			t.Fatalf("transport-cc extension %x", e)
		}
		return uint16(e[0])<<8 | uint16(e[1])
	}
	now := time.Now().UnixNano()
	for i := range 5 {
		cache.put(pkt, nil)
		d.write(0, pkt, i == 0, now)
		got, n := readSRTP(t, rc, dec)
		if q := tseq(got); q != uint16(i) {
			t.Fatalf("packet %d: transport sequence %d", i, q)
		}
		if size, ok := cc.Recorded(uint16(i)); !ok || size != n {
			t.Fatalf("ring slot %d: size %d (%v), want %d", i, size, ok, n)
		}
		pkt.SequenceNumber++
	}
	if d.resend(pkt.SequenceNumber-2, make([]byte, 1500)) != resendSent {
		t.Fatal("resend missed")
	}
	if got, _ := readSRTP(t, rc, dec); tseq(got) != 5 || got.SequenceNumber != pkt.SequenceNumber-2 {
		t.Fatalf("retransmission: transport sequence %d, rtp sequence %d", tseq(got), got.SequenceNumber)
	}
	if a := testing.AllocsPerRun(200, func() {
		d.write(0, pkt, false, now)
		pkt.SequenceNumber++
	}); a != 0 {
		t.Errorf("own-path write with transport-cc: %v allocations per packet", a)
	}
	next := cc.Next() // the drop must not take the one after it
	// 12 header + 8 extension + payload + 16 tag = 1501: fits only without it.
	big := &rtp.Packet{Header: pkt.Header, Payload: make([]byte, ownMTU-12-16-7)}
	drops := testutilCounter(d.t.r.s.m.ownDrops)
	d.write(0, big, false, now)
	if after := cc.Next(); testutilCounter(d.t.r.s.m.ownDrops) != drops+1 || after != next+1 {
		t.Fatalf("oversized with the extension: drops %v -> %v, transport sequence %d -> %d",
			drops, testutilCounter(d.t.r.s.m.ownDrops), next+1, after)
	}
}

// BenchmarkOwnPathWriteTWCC is BenchmarkOwnPathWrite for a subscriber
// that negotiated transport-cc: the extension, its sequence number and the
// ring record on every packet.
func BenchmarkOwnPathWriteTWCC(b *testing.B) {
	d, _, _, _ := newOwnTestDown(b, srtp.ProtectionProfileAeadAes128Gcm)
	d.sub.own.cc = gcc.New(time.Now().UnixNano())
	d.twccID = 5
	benchOwnPathWrite(b, d)
}
