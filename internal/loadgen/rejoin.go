package loadgen

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/pion/webrtc/v4"
)

// rejoiner is an optional Signaler capability: the server tells the client
// to rejoin (its node failed or drains) and takes a new offer on the same
// signaling connection (WSSignaler; docs/signal.md, "Rejoin").
type rejoiner interface {
	Rejoins() <-chan string
	Rejoin(ctx context.Context, offer string) (answer string, err error)
}

// rejoinAttempts and rejoinRetry bound how a client retries a rejoin that
// fails (no live node yet, the new node refusing): 10 attempts 500 ms
// apart.
const (
	rejoinAttempts = 10
	rejoinRetry    = 500 * time.Millisecond
)

// rejoin is one rejoin of a client.
type rejoin struct {
	reason string
	// at is when the rejoin message arrived; lastMedia when the last
	// packet arrived before it (zero: none had).
	at, lastMedia time.Time
	// tracksFrom is the index in Client.tracks of the first track of the
	// new peer connection.
	tracksFrom int
	err        error
}

// Rejoin is one rejoin as a client saw it.
type Rejoin struct {
	Reason string
	// At is when the server's rejoin message arrived.
	At time.Time
	// LastMedia is when the last packet arrived before it (zero: none).
	LastMedia time.Time
	// MediaAgain is when the first packet arrived on the new peer
	// connection (zero: not yet).
	MediaAgain time.Time
	// Err is why the rejoin failed, after every attempt.
	Err error
}

// Gap is the media interruption the participant saw: from the last packet
// before the rejoin to the first after (0 until media flows again).
func (r Rejoin) Gap() time.Duration {
	if r.MediaAgain.IsZero() || r.LastMedia.IsZero() {
		return 0
	}
	return r.MediaAgain.Sub(r.LastMedia)
}

// Rejoins returns the client's rejoins so far.
func (c *Client) Rejoins() []Rejoin {
	c.dataMu.Lock()
	rs := slices.Clone(c.rejoins)
	c.dataMu.Unlock()
	tracks := c.Tracks()
	out := make([]Rejoin, len(rs))
	for i, r := range rs {
		out[i] = Rejoin{Reason: r.reason, At: r.at, LastMedia: r.lastMedia, Err: r.err}
		end := len(tracks)
		if i+1 < len(rs) {
			end = min(end, rs[i+1].tracksFrom)
		}
		for _, t := range tracks[min(r.tracksFrom, end):end] {
			if f := t.firstAt.Load(); f != 0 && (out[i].MediaAgain.IsZero() || f < out[i].MediaAgain.UnixNano()) {
				out[i].MediaAgain = time.Unix(0, f)
			}
		}
	}
	return out
}

// rejoinLoop serves the server's rejoin messages until the client closes.
func (c *Client) rejoinLoop(ctx context.Context, r rejoiner) {
	for {
		select {
		case <-ctx.Done():
			return
		case reason := <-r.Rejoins():
			c.rejoin(ctx, r, reason)
		}
	}
}

// rejoin replaces the peer connection: the old one is closed, a new one
// carries the same published tracks and subscribes again; the join goes
// on the same signaling connection with the same token.
func (c *Client) rejoin(ctx context.Context, r rejoiner, reason string) {
	rec := rejoin{reason: reason, at: time.Now()}
	var last int64
	for _, t := range c.Tracks() {
		last = max(last, t.lastAt.Load())
	}
	if last != 0 {
		rec.lastMedia = time.Unix(0, last)
	}
	c.negMu.Lock()
	defer c.negMu.Unlock()
	if ctx.Err() != nil {
		return
	}
	_ = c.PC().Close()
	var err error
	for attempt := range rejoinAttempts {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(rejoinRetry):
			}
		}
		if err = c.rejoinOnce(ctx, r, &rec); err == nil {
			break
		}
	}
	rec.err = err
	c.dataMu.Lock()
	c.rejoins = append(c.rejoins, rec)
	c.dataMu.Unlock()
}

func (c *Client) rejoinOnce(ctx context.Context, r rejoiner, rec *rejoin) error {
	pc, err := c.newPC()
	if err != nil {
		return err
	}
	jctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	c.mu.Lock()
	rec.tracksFrom = len(c.tracks)
	c.mu.Unlock()
	offer, err := c.prepare(jctx, pc)
	var answer string
	if err == nil {
		answer, err = r.Rejoin(jctx, offer)
	}
	if err == nil {
		err = pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer})
	}
	if err != nil {
		_ = pc.Close()
		return fmt.Errorf("loadgen: rejoin: %w", err)
	}
	c.pcMu.Lock()
	c.pc = pc
	c.pcMu.Unlock()
	if c.cfg.Publish {
		c.readPublisherRTCP(pc)
		c.keyframe.Store(true) // the new node's subscribers need one now
	}
	return nil
}
