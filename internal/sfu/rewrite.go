package sfu

import (
	"time"

	"github.com/pion/rtp"
)

// seqRewriter makes one receiver's copy of a track one continuous RTP
// stream whatever simulcast layer it comes from: it forwards one layer
// (cur), switches to the wanted one (target) on that layer's keyframe, and
// offsets the sequence numbers and timestamps of the new layer so they
// follow the last packet sent. A WebRTC subscriber's downTrack and a relay
// client's one-layer choice (relaysub.go) use it; the caller guards it.
type seqRewriter struct {
	clock   uint32 // the track's RTP clock rate
	cur     int    // layer being forwarded, -1 none yet
	target  int    // layer wanted
	started bool
	seqOff  uint16
	tsOff   uint32
	lastSeq uint16
	lastTS  uint32
	lastAt  int64
	// epochLen counts the packets sent from the current source layer (up
	// to cacheSize): NACKs reaching further back map to another layer and
	// go unanswered.
	epochLen int
	// resync: the track was unmuted (or the receiver resumed); the next
	// packet forwarded (for video, a keyframe) continues the outgoing
	// sequence numbers and timestamps from the last sent, as a layer
	// switch does (mute.go).
	resync bool
}

// current is the layer forwarded, or before the first the target.
func (w *seqRewriter) current() int {
	if w.cur < 0 {
		return w.target
	}
	return w.cur
}

// admit reports whether pkt, of layer idx, goes out: a packet of the
// layer forwarded, or the keyframe (key) of the target layer, which
// switches to it (switched: from another layer that was being forwarded).
// video: only a keyframe ends a resync.
func (w *seqRewriter) admit(idx int, pkt *rtp.Packet, key, video bool, now int64) (ok, switched bool) {
	if w.resync && !w.resyncStep(idx, pkt, key, video, now) {
		return false, false
	}
	if idx != w.cur {
		if idx != w.target || !key {
			return false, false
		}
		if w.started {
			w.rebase(pkt, now)
		}
		w.resync = false
		switched = w.cur >= 0
		w.cur = idx
		w.epochLen = 0
	}
	return true, switched
}

// next returns pkt's outgoing sequence number and timestamp (admit said
// it goes out) and records it as sent.
func (w *seqRewriter) next(pkt *rtp.Packet, now int64) (uint16, uint32) {
	seq, ts := pkt.SequenceNumber+w.seqOff, pkt.Timestamp+w.tsOff
	// A packet older than the last one sent (reordered on the network, or
	// one pion still had in flight when the own receive path took over
	// the SSRC) keeps the newest as the base of the next layer switch.
	if !w.started || int16(seq-w.lastSeq) > 0 {
		w.lastSeq, w.lastTS, w.lastAt = seq, ts, now
	}
	w.started = true
	if w.epochLen < cacheSize {
		w.epochLen++
	}
	return seq, ts
}

// resyncStep handles the first packets after an unmute: it reports
// whether pkt may be written. A packet of the current layer (for video, a
// keyframe) continues the outgoing numbering; other layers are left to the
// layer switch, which rebases too.
func (w *seqRewriter) resyncStep(idx int, pkt *rtp.Packet, key, video bool, now int64) bool {
	if video && !key {
		return false
	}
	if idx != w.cur {
		return true
	}
	if w.started {
		w.rebase(pkt, now)
	}
	w.resync = false
	w.epochLen = 0
	return true
}

// rebase makes pkt follow the last packet sent: the next sequence
// number, and a timestamp advanced by the wall time since.
func (w *seqRewriter) rebase(pkt *rtp.Packet, now int64) {
	w.seqOff = w.lastSeq + 1 - pkt.SequenceNumber
	delta := uint32(uint64(now-w.lastAt) * uint64(w.clock) / uint64(time.Second))
	if delta == 0 {
		delta = 1
	}
	w.tsOff = w.lastTS + delta - pkt.Timestamp
}
