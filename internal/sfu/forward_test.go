package sfu

import (
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"

	"github.com/traverse-rtc/traverse/internal/rtpcodec"
)

// sinkWriter is a webrtc.TrackLocalWriter that keeps the last header.
type sinkWriter struct {
	n   int
	hdr rtp.Header
}

func (w *sinkWriter) WriteRTP(h *rtp.Header, payload []byte) (int, error) {
	w.n++
	w.hdr = *h
	return len(payload), nil
}

func (w *sinkWriter) Write(b []byte) (int, error) { return len(b), nil }

// newTestDown returns a bound downTrack of a one-layer video track writing
// to a sinkWriter, and the track's layer cache.
func newTestDown(t testing.TB) (*downTrack, *sinkWriter, *packetCache) {
	t.Helper()
	s := &Server{}
	s.m = newMetrics(s, nil)
	r := &room{s: s, name: "r"}
	pt := &pubTrack{r: r, id: "v", streamID: "s", kind: webrtc.RTPCodecTypeVideo, ck: rtpcodec.CodecOf("video/VP8"), nrids: 1}
	empty := []*downTrack{}
	pt.downs.Store(&empty)
	l := &layer{idx: 0, cache: &packetCache{}}
	pt.layers[0] = l
	d := newDownTrack(pt, nil)
	w := &sinkWriter{}
	d.ws, d.ssrc, d.pt, d.clock = w, 0xabcdef, 96, 90000
	return d, w, l.cache
}

// TestDownTrackWriteAllocs: forwarding a packet to a subscriber (the
// header rewrite and the write) and answering a NACK from the cache
// allocate nothing.
func TestDownTrackWriteAllocs(t *testing.T) {
	d, w, cache := newTestDown(t)
	pkt := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 100, SequenceNumber: 1000, Timestamp: 5000, SSRC: 1}, Payload: make([]byte, 1200)}
	if err := pkt.SetExtension(3, []byte{1, 2}); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UnixNano()
	cache.put(pkt, nil)
	d.write(0, pkt, true, now)
	if w.n != 1 || w.hdr.SSRC != 0xabcdef || w.hdr.PayloadType != 96 || w.hdr.Extension || w.hdr.Extensions != nil {
		t.Fatalf("rewritten header %+v after %d writes", w.hdr, w.n)
	}
	if a := testing.AllocsPerRun(1000, func() {
		pkt.SequenceNumber++
		pkt.Timestamp += 3000
		d.write(0, pkt, false, now)
	}); a != 0 {
		t.Errorf("downTrack.write: %v allocations per packet", a)
	}
	if w.hdr.SequenceNumber != pkt.SequenceNumber || w.hdr.Timestamp != pkt.Timestamp {
		t.Errorf("sequence/timestamp %d/%d, want %d/%d (no offset before a switch)", w.hdr.SequenceNumber, w.hdr.Timestamp,
			pkt.SequenceNumber, pkt.Timestamp)
	}
	cache.put(pkt, nil)
	buf := make([]byte, 1500)
	if d.resend(pkt.SequenceNumber, buf) != resendSent {
		t.Fatal("resend missed the cached packet")
	}
	if a := testing.AllocsPerRun(1000, func() {
		d.resent = [resentSlots]resentMark{} // past the gap: the send path
		if d.resend(pkt.SequenceNumber, buf) != resendSent {
			t.Fatal("resend missed")
		}
	}); a != 0 {
		t.Errorf("downTrack.resend: %v allocations per NACKed packet", a)
	}
}

// BenchmarkDownTrackWrite is the per-subscriber cost of forwarding one
// packet, without pion's SRTP and socket below it.
func BenchmarkDownTrackWrite(b *testing.B) {
	d, _, _ := newTestDown(b)
	pkt := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 100, SSRC: 1}, Payload: make([]byte, 1200)}
	now := time.Now().UnixNano()
	d.write(0, pkt, true, now)
	b.ReportAllocs()
	for b.Loop() {
		pkt.SequenceNumber++
		d.write(0, pkt, false, now)
	}
}
