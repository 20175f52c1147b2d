package srtpseal

import (
	"bytes"
	"testing"

	"github.com/pion/rtp"
	"github.com/pion/srtp/v3"

	"github.com/traverse-rtc/traverse/internal/sfu/srtpseal/srtpsealtest"
)

// TestSRTPGCMMatchesPion: for both AEAD profiles, GCM's packets are
// byte for byte what pion's srtp.Context makes from the same master key,
// across a sequence number wrap, reordered and repeated packets, and
// headers with CSRCs and extensions.
func TestSRTPGCMMatchesPion(t *testing.T) {
	for _, prof := range []srtp.ProtectionProfile{srtp.ProtectionProfileAeadAes128Gcm, srtp.ProtectionProfileAeadAes256Gcm} {
		t.Run(prof.String(), func(t *testing.T) {
			key, salt := srtpsealtest.Keys(prof, 3, 1, 7, 5)
			ref, err := srtp.CreateContext(key, salt, prof)
			if err != nil {
				t.Fatal(err)
			}
			g, err := NewGCM(key, salt)
			if err != nil {
				t.Fatal(err)
			}
			seqs := []uint16{65500, 65501, 65535, 0, 65534, 1, 2, 2, 40000, 7000, 7001, 32768, 32767, 65535, 100}
			for i, seq := range seqs {
				pkt := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SequenceNumber: seq, Timestamp: uint32(i) * 3000,
					SSRC: 0x11223344, Marker: i%2 == 0}, Payload: bytes.Repeat([]byte{byte(i)}, 100+i*37)}
				if i%3 == 0 {
					pkt.CSRC = []uint32{1, 2}
				}
				if i%4 == 0 {
					if err := pkt.SetExtension(1, []byte{9, 9, 9}); err != nil {
						t.Fatal(err)
					}
				}
				plain, err := pkt.Marshal()
				if err != nil {
					t.Fatal(err)
				}
				want, err := ref.EncryptRTP(nil, plain, nil)
				if err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, len(plain), len(plain)+TagLen)
				copy(buf, plain)
				got, ok := g.Seal(buf, pkt.Header.MarshalSize(), len(plain), pkt.SSRC, seq)
				if !ok || !bytes.Equal(got, want) {
					t.Fatalf("packet %d (seq %d) differs from pion's", i, seq)
				}
			}
			buf := make([]byte, 1300)
			if a := testing.AllocsPerRun(100, func() { g.Seal(buf, 12, 1200, 1, 5) }); a != 0 {
				t.Errorf("seal: %v allocations", a)
			}
		})
	}
}

// BenchmarkSRTPSeal compares pion's srtp.Context.EncryptRTP with GCM
// on a 1200-byte payload, in place.
func BenchmarkSRTPSeal(b *testing.B) {
	key, salt := make([]byte, 16), make([]byte, 12)
	pkt := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SSRC: 1}, Payload: make([]byte, 1200)}
	plain, _ := pkt.Marshal()
	buf := make([]byte, 1500)
	b.Run("pion", func(b *testing.B) {
		ctx, _ := srtp.CreateContext(key, salt, srtp.ProtectionProfileAeadAes128Gcm)
		var h rtp.Header
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			n := copy(buf, plain)
			buf[3] = byte(i)
			if _, err := ctx.EncryptRTP(buf[:0], buf[:n], &h); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("own", func(b *testing.B) {
		g, _ := NewGCM(key, salt)
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			n := copy(buf, plain)
			g.Seal(buf, 12, n, 1, uint16(i))
		}
	})
}

// TestSRTPGCMOpenMatchesPion: packets sealed by pion's srtp.Context are
// opened by GCM exactly as a pion receiving context (replay window of
// 64) opens them: the same plaintext, and the same packets refused, across
// a sequence number wrap, reordering, duplicates, a packet older than the
// window and tampered tags and headers.
// One fixture is walked through the cases in order, each starting from the
// state (sequence numbers, replay window, counters) the last one left, which
// is part of what is tested: hence its length.
func TestSRTPGCMOpenMatchesPion(t *testing.T) {
	for _, prof := range []srtp.ProtectionProfile{srtp.ProtectionProfileAeadAes128Gcm, srtp.ProtectionProfileAeadAes256Gcm} {
		t.Run(prof.String(), func(t *testing.T) {
			key, salt := srtpsealtest.Keys(prof, 5, 2, 11, 3)
			snd, err := srtp.CreateContext(key, salt, prof)
			if err != nil {
				t.Fatal(err)
			}
			ref, err := srtp.CreateContext(key, salt, prof, srtp.SRTPReplayProtection(ReplayWindow))
			if err != nil {
				t.Fatal(err)
			}
			g, err := NewGCM(key, salt)
			if err != nil {
				t.Fatal(err)
			}
			// Sealed in sending order: 65440 .. 65535, 0 .. 1203.
			const ssrc = 0xdeadbeef
			sealed := map[uint16][]byte{}
			plains := map[uint16][]byte{}
			var order []uint16
			for i := range 1300 {
				seq := uint16(65440 + i)
				pkt := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: seq,
					Timestamp: uint32(i) * 960, SSRC: ssrc}, Payload: bytes.Repeat([]byte{byte(i)}, 20+i%50)}
				if i%5 == 0 {
					if err := pkt.SetExtension(3, []byte{byte(i)}); err != nil {
						t.Fatal(err)
					}
				}
				plain, _ := pkt.Marshal()
				enc, err := snd.EncryptRTP(nil, plain, nil)
				if err != nil {
					t.Fatal(err)
				}
				sealed[seq], plains[seq] = enc, plain
				order = append(order, seq)
			}
			// Delivery: reordered pairs, duplicates, a packet 200 behind
			// (inside the window), one 1,080 behind (outside it, never
			// received before), tampering.
			var deliver []uint16
			for i := 0; i < len(order); i++ {
				switch {
				case i%7 == 3 && i+1 < len(order):
					deliver = append(deliver, order[i+1], order[i])
					i++
				case i%11 == 5:
					deliver = append(deliver, order[i], order[i])
				case i == 70, i == 100:
					// held back: they arrive 1,080 and 200 packets late
				case i == 300:
					deliver = append(deliver, order[i], order[i-200])
				case i == 1150:
					deliver = append(deliver, order[i], order[i-1080], order[i-20])
				default:
					deliver = append(deliver, order[i])
				}
			}
			dst := make([]byte, 1500)
			opens := 0
			for step, seq := range deliver {
				for _, tamper := range []string{"tag", "header", ""} {
					if tamper != "" && step%13 != 0 {
						continue
					}
					pkt := append([]byte(nil), sealed[seq]...)
					switch tamper {
					case "tag":
						pkt[len(pkt)-1] ^= 1
					case "header":
						pkt[1] ^= 1 // the payload type: authenticated, not encrypted
					}
					var h rtp.Header
					hn, err := h.Unmarshal(pkt)
					if err != nil {
						t.Fatal(err)
					}
					want, werr := ref.DecryptRTP(nil, append([]byte(nil), pkt...), nil)
					n, res := g.Open(dst, pkt, hn, h.SSRC, h.SequenceNumber)
					if (werr == nil) != (res == Opened) {
						t.Fatalf("step %d seq %d tamper %q: pion %v, own %v", step, seq, tamper, werr, res)
					}
					if werr != nil {
						if tamper == "" && res != OpenReplay {
							t.Fatalf("step %d seq %d: refused as %v, want a replay", step, seq, res)
						}
						// A tampered copy of a packet already received is a
						// replay first, for pion as for us.
						if tamper != "" && res != OpenAuth && res != OpenReplay {
							t.Fatalf("step %d seq %d tampered %s: refused as %v, want auth", step, seq, tamper, res)
						}
						continue
					}
					opens++
					if !bytes.Equal(dst[:n], want) || !bytes.Equal(want, plains[seq]) {
						t.Fatalf("step %d seq %d: plaintext differs", step, seq)
					}
				}
			}
			if opens != len(order)-1 { // all but the one 1,080 behind
				t.Fatalf("opened %d of %d packets", opens, len(order))
			}
		})
	}
}

// TestSRTPGCMOpenAllocs: opening a packet does not allocate.
func TestSRTPGCMOpenAllocs(t *testing.T) {
	key, salt := make([]byte, 16), make([]byte, 12)
	snd, _ := srtp.CreateContext(key, salt, srtp.ProtectionProfileAeadAes128Gcm)
	g, _ := NewGCM(key, salt)
	pkts := make([][]byte, 200)
	for i := range pkts {
		pkt := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SequenceNumber: uint16(i), SSRC: 1},
			Payload: make([]byte, 1200)}
		plain, _ := pkt.Marshal()
		pkts[i], _ = snd.EncryptRTP(nil, plain, nil)
	}
	dst := make([]byte, 1500)
	i := 0
	if a := testing.AllocsPerRun(100, func() {
		if _, res := g.Open(dst, pkts[i], 12, 1, uint16(i)); res != Opened {
			t.Fatalf("packet %d: %v", i, res)
		}
		i++
	}); a != 0 {
		t.Errorf("open: %v allocations", a)
	}
}

// TestSRTPGCMOpenLateRetransmission: a packet lost on the way and
// retransmitted after a NACK arrives behind newer ones; 200 behind (0.2 s
// of a 1,000 packets/s track) it is still opened, once, as a browser's
// libsrtp (window 1,024) would; 1,100 behind it is refused.
func TestSRTPGCMOpenLateRetransmission(t *testing.T) {
	key, salt := make([]byte, 16), make([]byte, 12)
	snd, _ := srtp.CreateContext(key, salt, srtp.ProtectionProfileAeadAes128Gcm)
	g, _ := NewGCM(key, salt)
	seal := func(seq uint16) []byte {
		pkt := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SequenceNumber: seq, SSRC: 1}, Payload: make([]byte, 100)}
		plain, _ := pkt.Marshal()
		enc, err := snd.EncryptRTP(nil, plain, nil)
		if err != nil {
			t.Fatal(err)
		}
		return enc
	}
	sealed := make([][]byte, 1200)
	for i := range sealed {
		sealed[i] = seal(uint16(i))
	}
	dst := make([]byte, 1500)
	open := func(seq uint16) OpenResult {
		_, res := g.Open(dst, sealed[seq], 12, 1, seq)
		return res
	}
	for i := range 1200 {
		if i == 10 || i == 900 {
			continue // lost
		}
		if res := open(uint16(i)); res != Opened {
			t.Fatalf("packet %d: %v", i, res)
		}
		if i == 1100 {
			if res := open(900); res != Opened {
				t.Fatalf("the retransmission of 900, 200 behind: %v, want opened", res)
			}
			if res := open(900); res != OpenReplay {
				t.Fatalf("its duplicate: %v, want a replay", res)
			}
		}
	}
	if res := open(10); res != OpenReplay {
		t.Fatalf("the retransmission of 10, 1,189 behind: %v, want refused", res)
	}
}
