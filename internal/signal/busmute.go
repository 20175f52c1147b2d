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
