package sfu

import (
	"time"

	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"

	"github.com/traverse-rtc/traverse/internal/bus"
)

// The operator's mute (bus.RequestMute, from signal's room API): the node
// stops forwarding a published track, whatever the publisher's client
// does, and on unmute resumes it for every subscriber without a gap in
// their sequence numbers (as a layer switch), video from a keyframe.

// setMuted mutes or unmutes the tracks p publishes that req names.
func (p *participant) setMuted(req *bus.MuteRequest) error {
	var ts []*pubTrack
	p.room.mu.Lock()
	for _, t := range p.room.tracks {
		if t.pub == p && (req.Track == "*" || t.id == req.Track) {
			ts = append(ts, t)
		}
	}
	p.room.mu.Unlock()
	if len(ts) == 0 && req.Track != "*" {
		return bus.Errorf(bus.StatusNotFound, "session %s publishes no track %q", p.id, req.Track)
	}
	for _, t := range ts {
		t.setMuted(req.Muted)
	}
	p.s.log.Info("sfu: track mute", "session", p.id, "room", p.room.name, "track", req.Track, "muted", req.Muted, "tracks", len(ts))
	return nil
}

func (t *pubTrack) setMuted(muted bool) {
	if t.muted.Swap(muted) == muted || muted {
		return
	}
	for _, d := range *t.downs.Load() {
		d.mu.Lock()
		d.resync = true
		d.mu.Unlock()
	}
	if t.kind == webrtc.RTPCodecTypeVideo {
		for i := range maxLayers {
			t.requestKeyframe(i)
		}
	}
}

// resyncLocked handles the first packets after an unmute: it reports
// whether pkt may be written. A packet of the current layer (for video, a
// keyframe) continues the outgoing numbering; other layers are left to the
// layer switch, which rebases too.
func (d *downTrack) resyncLocked(idx int, pkt *rtp.Packet, key bool, now int64) bool {
	if d.t.kind == webrtc.RTPCodecTypeVideo && !key {
		return false
	}
	if idx != d.cur {
		return true
	}
	if d.started {
		d.rebaseLocked(pkt, now)
	}
	d.resync = false
	d.epochLen = 0
	return true
}

// rebaseLocked makes pkt follow the last packet sent: the next sequence
// number, and a timestamp advanced by the wall time since.
func (d *downTrack) rebaseLocked(pkt *rtp.Packet, now int64) {
	d.seqOff = d.lastSeq + 1 - pkt.SequenceNumber
	delta := uint32(uint64(now-d.lastAt) * uint64(d.clock) / uint64(time.Second))
	if delta == 0 {
		delta = 1
	}
	d.tsOff = d.lastTS + delta - pkt.Timestamp
}
