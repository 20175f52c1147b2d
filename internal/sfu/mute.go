package sfu

import (
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
