package sfu

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/pion/webrtc/v4"

	"github.com/traverse-rtc/traverse/internal/bus"
)

// stats is the session's path and bit rates (bus.RequestStats): what the
// operator's room listing shows.
func (p *participant) stats() bus.SessionStats {
	var st bus.SessionStats
	if pc := p.pc; pc != nil {
		if sctp := pc.SCTP(); sctp != nil && sctp.Transport() != nil && sctp.Transport().ICETransport() != nil {
			if pair, err := sctp.Transport().ICETransport().GetSelectedCandidatePair(); err == nil && pair != nil && pair.Remote != nil {
				st.Path = pair.Remote.Protocol.String()
				if pair.Remote.Typ == webrtc.ICECandidateTypeRelay {
					st.Path = "relay"
				}
				if a, err := netip.ParseAddr(pair.Remote.Address); err == nil {
					st.Remote = netip.AddrPortFrom(a, pair.Remote.Port).String()
				}
			}
		}
	}
	var pubs []*pubTrack
	p.room.mu.Lock()
	for _, t := range p.room.tracks {
		if t.pub == p {
			pubs = append(pubs, t)
		}
	}
	p.room.mu.Unlock()
	for _, t := range pubs {
		st.BitrateIn += t.bitrate()
	}
	p.negMu.Lock()
	downs := slices.Collect(maps.Values(p.downs))
	p.negMu.Unlock()
	for _, d := range downs {
		d.mu.Lock()
		cur := d.cur
		d.mu.Unlock()
		if cur < 0 || cur >= maxLayers || d.t.muted.Load() {
			continue
		}
		d.t.mu.Lock()
		if l := d.t.layers[cur]; l != nil {
			st.BitrateOut += l.bitrate.Load()
		}
		d.t.mu.Unlock()
	}
	return st
}
