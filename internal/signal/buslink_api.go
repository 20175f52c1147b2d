package signal

import (
	"context"

	"github.com/traverse-rtc/traverse/internal/bus"
)

// muter is an optional Link capability: the node stops (or resumes)
// forwarding a track the session publishes (the room API's mute).
type muter interface {
	Mute(ctx context.Context, track string, muted bool) error
}

// Mute asks the node to stop or resume forwarding one of the session's
// published tracks ("*": all).
func (l *busLink) Mute(ctx context.Context, track string, muted bool) error {
	return l.sendJoined(ctx, "mute", bus.Request{Type: bus.RequestMute, Session: l.req.Session,
		Mute: &bus.MuteRequest{Track: track, Muted: muted}})
}

// SessionStats is how a participant's media reaches its node and what it
// moves (bus.SessionStats).
type SessionStats struct {
	Path       string
	Remote     string
	BitrateIn  uint64
	BitrateOut uint64
}

// statser is an optional Link capability: the node's view of the session.
type statser interface {
	Stats(ctx context.Context) (SessionStats, error)
}

// Stats asks the node for the session's path and bit rates.
func (l *busLink) Stats(ctx context.Context) (SessionStats, error) {
	l.mu.Lock()
	joined := l.joined
	l.mu.Unlock()
	if !joined {
		return SessionStats{}, nil // no media before the first offer
	}
	r, err := l.b.c.Request(ctx, l.target(), bus.Request{Type: bus.RequestStats, Session: l.req.Session})
	if err != nil {
		return SessionStats{}, fromBus(err)
	}
	if r.Stats == nil {
		return SessionStats{}, nil
	}
	return SessionStats{Path: r.Stats.Path, Remote: r.Stats.Remote, BitrateIn: r.Stats.BitrateIn, BitrateOut: r.Stats.BitrateOut}, nil
}
