package srtpseal

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
)

// GCM protects one SSRC's outgoing RTP with AEAD_AES_128_GCM or
// AEAD_AES_256_GCM (RFC 7714), in place. pion's srtp.Context does the
// same, but per packet it also parses the header again and looks the SSRC
// up in a map; in the 1 -> 50 fan-out that overhead was about 13 % of the
// node's CPU, more than AES-GCM itself. Its output is byte for byte
// pion's (TestSRTPGCMMatchesPion), and the AES-CM/HMAC profiles stay with
// pion's context.
type GCM struct {
	aead  cipher.AEAD
	salt  [12]byte // session salt
	iv    [12]byte // a field: a local array handed to Seal would escape
	index uint64   // extended sequence number (ROC << 16 | SEQ) of the highest packet sent or received
	begun bool
	// window has the bit of index i (bit i%64 of word i/64%len) set when
	// i, one of the last ReplayWindow indexes, was received (open only).
	window [ReplayWindow / 64]uint64
}

// SRTP key derivation labels (RFC 3711 section 4.3.2).
const (
	labelSRTPEncryption = 0x00
	labelSRTPSalt       = 0x02
)

// TagLen is the AEAD authentication tag length (RFC 7714 section 12).
const TagLen = 16

func NewGCM(masterKey, masterSalt []byte) (*GCM, error) {
	if len(masterSalt) != 12 {
		return nil, fmt.Errorf("%w: GCM master salt of %d bytes", ErrNoKeys, len(masterSalt))
	}
	key, err := srtpKDF(labelSRTPEncryption, masterKey, masterSalt, len(masterKey))
	if err != nil {
		return nil, err
	}
	salt, err := srtpKDF(labelSRTPSalt, masterKey, masterSalt, len(masterSalt))
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	g := &GCM{aead: aead}
	copy(g.salt[:], salt)
	return g, nil
}

// srtpKDF is the AES-CM key derivation of RFC 3711 section 4.3.3 with a
// key derivation rate of 0 (as WebRTC uses it, and RFC 7714 section 11).
func srtpKDF(label byte, masterKey, masterSalt []byte, n int) ([]byte, error) {
	block, err := aes.NewCipher(masterKey)
	if err != nil {
		return nil, err
	}
	var in [16]byte
	copy(in[:], masterSalt)
	in[7] ^= label
	out := make([]byte, (n+15)/16*16)
	for i := 0; i < n; i += 16 {
		binary.BigEndian.PutUint16(in[14:], uint16(i/16))
		block.Encrypt(out[i:i+16], in[:])
	}
	return out[:n], nil
}

// estimate returns the rollover counter for sequence number seq and its
// distance from the highest index so far (RFC 3711 section 3.3.1 and
// appendix A, exactly as pion's srtpSSRCState.nextRolloverCount, so a
// reordered packet keeps its ROC); before the first packet it is 0, 0.
func (g *GCM) estimate(seq uint16) (roc uint32, diff int32) {
	const median, span = 1 << 15, 1 << 16
	if !g.begun {
		return 0, 0
	}
	localROC := uint32(g.index >> 16)
	local := int32(g.index & (span - 1))
	s := int32(seq)
	guess, diff := localROC, s-local
	if g.index > median {
		if local < median {
			if s-local > median {
				guess, diff = localROC-1, s-local-span
			}
		} else if local-median > s {
			guess, diff = localROC+1, s-local+span
		}
	}
	return guess, diff
}

// roc returns the rollover counter for sequence number seq and advances
// the highest index sent; ok is false when the 2^48 packet index space is
// used up (section 9.2).
func (g *GCM) roc(seq uint16) (roc uint32, ok bool) {
	if !g.begun {
		g.begun = true
		g.index = uint64(seq)
		return 0, true
	}
	guess, diff := g.estimate(seq)
	if guess == 0 && uint32(g.index>>16) == 1<<32-1 {
		return 0, false
	}
	if diff > 0 {
		g.index += uint64(diff)
	}
	return guess, true
}

// setIV sets g.iv for ssrc, roc and seq (RFC 7714 section 8.1: 00 00 ||
// SSRC || ROC || SEQ, XOR the salt).
func (g *GCM) setIV(ssrc, roc uint32, seq uint16) {
	g.iv = [12]byte{}
	binary.BigEndian.PutUint32(g.iv[2:], ssrc)
	binary.BigEndian.PutUint32(g.iv[6:], roc)
	binary.BigEndian.PutUint16(g.iv[10:], seq)
	for i := range g.iv {
		g.iv[i] ^= g.salt[i]
	}
}

// Seal encrypts the RTP packet buf[:n], whose header is buf[:hn], in
// place and returns the SRTP packet buf[:n+TagLen]; cap(buf) must hold
// it. It does not allocate.
func (g *GCM) Seal(buf []byte, hn, n int, ssrc uint32, seq uint16) ([]byte, bool) {
	roc, ok := g.roc(seq)
	if !ok || n+TagLen > cap(buf) {
		return nil, false
	}
	g.setIV(ssrc, roc, seq)
	g.aead.Seal(buf[hn:hn], g.iv[:], buf[hn:n], buf[:hn])
	return buf[:n+TagLen], true
}

// OpenResult says what open did with a packet.
type OpenResult uint8

const (
	Opened     OpenResult = iota
	OpenShort             // shorter than its header and tag
	OpenReplay            // index already received, or older than the replay window
	OpenAuth              // the tag did not verify (wrong key, ROC or a forgery)
)

// ReplayWindow is how far behind the highest index a packet is still
// accepted once (RFC 3711 section 3.3.2), a multiple of 64: browsers'
// 1024 (libwebrtc's and Firefox's libsrtp window_size), not pion's
// default 64, so that a retransmission the node NACKed arrives in time
// at a high packet rate (TestSRTPGCMOpenLateRetransmission).
const ReplayWindow = 1024

// Replayed reports whether Open would refuse sequence number seq as a
// replay (without looking at the packet).
func (g *GCM) Replayed(seq uint16) bool {
	_, diff := g.estimate(seq)
	return g.replayedAt(diff)
}

// replayedAt reports whether the index diff from the highest received
// was received already or is older than the replay window.
func (g *GCM) replayedAt(diff int32) bool {
	if !g.begun || diff > 0 {
		return false
	}
	back := uint64(-diff)
	return back >= ReplayWindow || g.seen(g.index-back)
}

// seen reports whether index i's bit is set in the window.
func (g *GCM) seen(i uint64) bool {
	return g.window[i/64%uint64(len(g.window))]&(1<<(i%64)) != 0
}

// mark sets (on) or clears index i's bit in the window.
func (g *GCM) mark(i uint64, on bool) {
	w, b := &g.window[i/64%uint64(len(g.window))], uint64(1)<<(i%64)
	if on {
		*w |= b
	} else {
		*w &^= b
	}
}

// StartAt makes seq, with rollover counter 0, the highest index received,
// as if a packet with it had been opened: for a stream taken over from
// another receiver (pion's, which like this one starts its rollover
// counter at 0 on the first packet) that opened up to seq.
func (g *GCM) StartAt(seq uint16) {
	g.begun, g.index, g.window = true, uint64(seq), [ReplayWindow / 64]uint64{}
	g.mark(g.index, true)
}

// Open authenticates and decrypts the SRTP packet pkt, whose header is
// pkt[:hn], into dst (header and plaintext, len(pkt)-TagLen bytes;
// cap(dst) must hold them) and returns its length. It keeps the receive
// side's rollover counter (the highest index received, advanced only by
// packets that verify) and a replay window of the last ReplayWindow
// indexes. pkt is left as it was: Go's GCM clears its output when a tag
// fails, so opening in place would destroy a packet the caller may still
// hand to pion. It does not allocate.
func (g *GCM) Open(dst, pkt []byte, hn int, ssrc uint32, seq uint16) (int, OpenResult) {
	n := len(pkt)
	if n < hn+TagLen || cap(dst) < n-TagLen {
		return 0, OpenShort
	}
	roc, diff := g.estimate(seq)
	if g.replayedAt(diff) {
		return 0, OpenReplay
	}
	g.setIV(ssrc, roc, seq)
	dst = dst[:hn]
	copy(dst, pkt[:hn])
	if _, err := g.aead.Open(dst[hn:hn], g.iv[:], pkt[hn:n], pkt[:hn]); err != nil {
		return 0, OpenAuth
	}
	switch {
	case !g.begun:
		g.StartAt(seq)
	case diff > 0:
		// The indexes skipped and the new one leave the bits of the
		// ones ReplayWindow older.
		if diff >= ReplayWindow {
			g.window = [ReplayWindow / 64]uint64{}
		} else {
			for i := g.index + 1; i < g.index+uint64(diff); i++ {
				g.mark(i, false)
			}
		}
		g.index = uint64(roc)<<16 | uint64(seq)
		g.mark(g.index, true)
	default:
		g.mark(g.index-uint64(-diff), true)
	}
	return n - TagLen, Opened
}
