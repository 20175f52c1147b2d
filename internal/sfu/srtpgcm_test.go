package sfu

import (
	"bytes"
	"testing"

	"github.com/pion/rtp"
	"github.com/pion/srtp/v3"
)

// TestSRTPGCMMatchesPion: for both AEAD profiles, srtpGCM's packets are
// byte for byte what pion's srtp.Context makes from the same master key,
// across a sequence number wrap, reordered and repeated packets, and
// headers with CSRCs and extensions.
func TestSRTPGCMMatchesPion(t *testing.T) {
	for _, prof := range []srtp.ProtectionProfile{srtp.ProtectionProfileAeadAes128Gcm, srtp.ProtectionProfileAeadAes256Gcm} {
		t.Run(prof.String(), func(t *testing.T) {
			keyLen, _ := prof.KeyLen()
			saltLen, _ := prof.SaltLen()
			key, salt := make([]byte, keyLen), make([]byte, saltLen)
			for i := range key {
				key[i] = byte(3*i + 1)
			}
			for i := range salt {
				salt[i] = byte(7*i + 5)
			}
			ref, err := srtp.CreateContext(key, salt, prof)
			if err != nil {
				t.Fatal(err)
			}
			g, err := newSRTPGCM(key, salt)
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
				buf := make([]byte, len(plain), len(plain)+gcmTagLen)
				copy(buf, plain)
				got, ok := g.seal(buf, pkt.Header.MarshalSize(), len(plain), pkt.SSRC, seq)
				if !ok || !bytes.Equal(got, want) {
					t.Fatalf("packet %d (seq %d) differs from pion's", i, seq)
				}
			}
			buf := make([]byte, 1300)
			if a := testing.AllocsPerRun(100, func() { g.seal(buf, 12, 1200, 1, 5) }); a != 0 {
				t.Errorf("seal: %v allocations", a)
			}
		})
	}
}

// BenchmarkSRTPSeal compares pion's srtp.Context.EncryptRTP with srtpGCM
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
		g, _ := newSRTPGCM(key, salt)
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			n := copy(buf, plain)
			g.seal(buf, 12, n, 1, uint16(i))
		}
	})
}
