package loadgen

import (
	"context"
	"sync"

	"github.com/traverse-rtc/traverse/internal/bus"
)

// BusSignaler speaks to one SFU node over the bus directly, as a signal
// server would (no tokens: the bus is trusted).
type BusSignaler struct {
	c       *bus.Client
	node    string
	session string
	offers  chan string
	sub     *bus.Subscription
	once    sync.Once
}

// NewBusSignaler returns a signaler for one session on node.
func NewBusSignaler(c *bus.Client, node string) *BusSignaler {
	return &BusSignaler{c: c, node: node, session: NewSessionID(), offers: make(chan string, 16)}
}

// Session returns the session id.
func (s *BusSignaler) Session() string { return s.session }

// Join subscribes to the session's messages, then sends the join.
func (s *BusSignaler) Join(ctx context.Context, room, identity string, publish, subscribe bool, offer string) (string, error) {
	sub, err := s.c.SubscribeSession(s.node, s.session, func(m bus.SessionMessage) {
		if m.Type == bus.SessionOffer {
			select {
			case s.offers <- m.SDP:
			default: // the client is hopelessly behind; drop
			}
		}
	})
	if err != nil {
		return "", err
	}
	s.sub = sub
	rep, err := s.c.Request(ctx, s.node, bus.Request{Type: bus.RequestJoin, Session: s.session,
		Join: &bus.Join{Room: room, Identity: identity, Publish: publish, Subscribe: subscribe, Offer: offer}})
	if err != nil {
		return "", err
	}
	return rep.SDP, nil
}

// Offers delivers the node's offers.
func (s *BusSignaler) Offers() <-chan string { return s.offers }

// Answer sends the client's answer.
func (s *BusSignaler) Answer(ctx context.Context, sdp string) error {
	_, err := s.c.Request(ctx, s.node, bus.Request{Type: bus.RequestAnswer, Session: s.session, SDP: sdp})
	return err
}

// Close leaves the session.
func (s *BusSignaler) Close() error {
	s.once.Do(func() {
		if s.sub != nil {
			s.sub.Unsubscribe()
			ctx, cancel := context.WithTimeout(context.Background(), 2e9)
			defer cancel()
			_, _ = s.c.Request(ctx, s.node, bus.Request{Type: bus.RequestLeave, Session: s.session})
		}
	})
	return nil
}
