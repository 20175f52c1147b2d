package p2p

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"

	"github.com/coder/websocket"
	"github.com/traverse-rtc/traverse/internal/signal/p2pwire"
)

// The signaling service's rendezvous (traverse signal, GET /p2p; protocol
// in docs/p2p.md): a peer registers with its token, whose identity becomes
// its name and whose room is the rendezvous namespace; messages between
// peers are marked by the server with the sender's name.

// wireMsg is one message of the protocol, as signal defines it.
type wireMsg = p2pwire.Message

// SignalConn is a Signaler over the signaling service's /p2p WebSocket.
type SignalConn struct {
	ws        *websocket.Conn
	local     string
	peer      string
	initiator bool
	mu        sync.Mutex // guards first
	first     []byte     // the message that named the peer (AcceptSignal)
}

// SignalOption configures DialSignal and AcceptSignal.
type SignalOption func(*websocket.DialOptions)

// WithHTTPClient dials the WebSocket with c (a lab's namespace, a proxy).
func WithHTTPClient(c *http.Client) SignalOption {
	return func(o *websocket.DialOptions) { o.HTTPClient = c }
}

func register(ctx context.Context, url, token string, opts []SignalOption) (*SignalConn, error) {
	var do websocket.DialOptions
	for _, f := range opts {
		f(&do)
	}
	ws, _, err := websocket.Dial(ctx, url, &do)
	if err != nil {
		return nil, fmt.Errorf("p2p: signal: %w", err)
	}
	ws.SetReadLimit(64 << 10)
	s := &SignalConn{ws: ws}
	if err := s.write(ctx, wireMsg{Type: "register", Token: token}); err != nil {
		ws.CloseNow()
		return nil, err
	}
	m, err := s.read(ctx)
	if err != nil {
		ws.CloseNow()
		return nil, err
	}
	if m.Type != "registered" {
		ws.CloseNow()
		return nil, fmt.Errorf("%w: %s %s", ErrSignal, m.Type, m.Error)
	}
	s.local = m.Name
	return s, nil
}

// DialSignal registers at the signaling service (url: ws://host:port/p2p)
// with token and returns a Signaler to the peer named peer, once the peer
// is registered too. This side is the caller (the handshake's initiator).
func DialSignal(ctx context.Context, url, token, peer string, opts ...SignalOption) (*SignalConn, error) {
	s, err := register(ctx, url, token, opts)
	if err != nil {
		return nil, err
	}
	if err := s.write(ctx, wireMsg{Type: "watch", Name: peer}); err != nil {
		s.Close()
		return nil, err
	}
	if _, err := s.await(ctx, func(m wireMsg) (bool, error) {
		if m.Type == "error" {
			return false, fmt.Errorf("%w: %s", ErrSignal, m.Error)
		}
		return m.Type == "present" && m.Name == peer, nil
	}); err != nil {
		return nil, err
	}
	s.peer, s.initiator = peer, true
	return s, nil
}

// AcceptSignal registers with token and waits for a caller: the first peer
// that sends a message becomes this Signaler's peer (messages from others
// are then ignored).
func AcceptSignal(ctx context.Context, url, token string, opts ...SignalOption) (*SignalConn, error) {
	s, err := register(ctx, url, token, opts)
	if err != nil {
		return nil, err
	}
	m, err := s.await(ctx, func(m wireMsg) (bool, error) { return m.Type == "msg" && m.From != "", nil })
	if err != nil {
		return nil, err
	}
	s.peer, s.first = m.From, m.Data
	return s, nil
}

// await reads until match takes a message (returning it) or fails (s is
// then closed, as it is when the read fails).
func (s *SignalConn) await(ctx context.Context, match func(wireMsg) (bool, error)) (wireMsg, error) {
	for {
		m, err := s.read(ctx)
		if err == nil {
			var ok bool
			if ok, err = match(m); ok {
				return m, nil
			}
		}
		if err != nil {
			s.Close()
			return wireMsg{}, err
		}
	}
}

func (s *SignalConn) write(ctx context.Context, m wireMsg) error {
	b, _ := json.Marshal(m)
	if err := s.ws.Write(ctx, websocket.MessageText, b); err != nil {
		return fmt.Errorf("p2p: signal: %w", err)
	}
	return nil
}

func (s *SignalConn) read(ctx context.Context) (wireMsg, error) {
	var m wireMsg
	_, b, err := s.ws.Read(ctx)
	if err != nil {
		return m, fmt.Errorf("p2p: signal: %w", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%w: %v", ErrSignal, err)
	}
	return m, nil
}

// Names implements Signaler.
func (s *SignalConn) Names() (string, string, bool) { return s.local, s.peer, s.initiator }

// Send implements Signaler.
func (s *SignalConn) Send(ctx context.Context, msg []byte) error {
	return s.write(ctx, wireMsg{Type: "send", To: s.peer, Data: msg})
}

// Recv implements Signaler: the peer's next message (server errors, such
// as the peer being gone, are returned as errors).
func (s *SignalConn) Recv(ctx context.Context) ([]byte, error) {
	s.mu.Lock()
	if f := s.first; f != nil {
		s.first = nil
		s.mu.Unlock()
		return f, nil
	}
	s.mu.Unlock()
	for {
		m, err := s.read(ctx)
		if err != nil {
			return nil, err
		}
		switch {
		case m.Type == "msg" && m.From == s.peer:
			return m.Data, nil
		case m.Type == "error":
			return nil, fmt.Errorf("%w: %s", ErrSignal, m.Error)
		}
	}
}

// Close closes the WebSocket.
func (s *SignalConn) Close() error { return s.ws.Close(websocket.StatusNormalClosure, "") }
