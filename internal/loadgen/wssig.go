package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// WSSignaler speaks signal's WebSocket JSON protocol (docs/signal.md).
type WSSignaler struct {
	url   string
	token func(ctx context.Context, room, identity string) (string, error)
	http  *http.Client // nil: http.DefaultClient

	ws     *websocket.Conn
	wmu    sync.Mutex // serializes writes
	offers chan string
	answer chan string
	errc   chan error
	done   chan struct{}
	wg     sync.WaitGroup
	once   sync.Once

	// tok is the token of the first join, which a rejoin sends again.
	tok     string
	joined  chan struct{}
	rejoins chan string // reasons of the server's rejoin messages
	// mu guards node and rejoining (written by the reader).
	mu sync.Mutex
	// node is the SFU node of the last joined message.
	node string
	// rejoining is set from a rejoin message to the next joined: node
	// offers in between belong to the session the server dropped.
	rejoining bool
}

// TokenFunc returns a token for room and identity.
type TokenFunc func(ctx context.Context, room, identity string) (string, error)

// DemoTokens fetches tokens from signal's /token endpoint next to wsURL
// (enabled with --demo-tokens, the default of serve).
func DemoTokens(wsURL string) TokenFunc {
	return func(ctx context.Context, room, identity string) (string, error) {
		u, err := url.Parse(wsURL)
		if err != nil {
			return "", err
		}
		u.Scheme = strings.Replace(strings.Replace(u.Scheme, "wss", "https", 1), "ws", "http", 1)
		u.Path = "/token"
		u.RawQuery = url.Values{"room": {room}, "identity": {identity}}.Encode()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return "", err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("loadgen: %s: %s", u, resp.Status)
		}
		var v struct {
			Token string `json:"token"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			return "", err
		}
		return v.Token, nil
	}
}

// NewWSSignaler returns a signaler for one session through signal at
// wsURL ("ws://host:7880/ws").
func NewWSSignaler(wsURL string, token TokenFunc) *WSSignaler {
	return &WSSignaler{url: wsURL, token: token, offers: make(chan string, 16), answer: make(chan string, 1),
		errc: make(chan error, 1), done: make(chan struct{}), joined: make(chan struct{}, 1), rejoins: make(chan string, 4)}
}

// WithHTTPClient makes the signaler dial its WebSocket with c (a custom
// dialer: into a network namespace, through a proxy). Call it before Join.
func (s *WSSignaler) WithHTTPClient(c *http.Client) *WSSignaler {
	s.http = c
	return s
}

type wsMsg struct {
	Type    string `json:"type"`
	Token   string `json:"token,omitempty"`
	SDP     string `json:"sdp,omitempty"`
	Class   string `json:"class,omitempty"`
	Message string `json:"message,omitempty"`
	Fatal   bool   `json:"fatal,omitempty"`
	Node    string `json:"node,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

func (s *WSSignaler) send(ctx context.Context, m wsMsg) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.ws.Write(ctx, websocket.MessageText, b)
}

// Join connects, joins with a token and sends the offer.
func (s *WSSignaler) Join(ctx context.Context, room, identity string, _, _ bool, offer string) (string, error) {
	tok, err := s.token(ctx, room, identity)
	if err != nil {
		return "", fmt.Errorf("loadgen: token: %w", err)
	}
	ws, _, err := websocket.Dial(ctx, s.url, &websocket.DialOptions{HTTPClient: s.http})
	if err != nil {
		return "", err
	}
	ws.SetReadLimit(1 << 20)
	s.ws = ws
	s.tok = tok
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.readLoop()
	}()
	return s.joinOffer(ctx, offer)
}

// joinOffer sends join with the token and then the offer, and returns the
// answer.
func (s *WSSignaler) joinOffer(ctx context.Context, offer string) (string, error) {
	if err := s.send(ctx, wsMsg{Type: "join", Token: s.tok}); err != nil {
		return "", err
	}
	select {
	case <-s.joined:
	case err := <-s.errc:
		return "", err
	case <-ctx.Done():
		return "", ctx.Err()
	}
	if err := s.send(ctx, wsMsg{Type: "offer", SDP: offer}); err != nil {
		return "", err
	}
	select {
	case a := <-s.answer:
		return a, nil
	case err := <-s.errc:
		return "", err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// Rejoin joins again on the same WebSocket with the same token, after
// the server's rejoin message, with a new peer connection's offer, and
// returns the answer (docs/signal.md, "Rejoin").
func (s *WSSignaler) Rejoin(ctx context.Context, offer string) (string, error) {
	for {
		select {
		case <-s.answer: // a stale answer of the dropped session
			continue
		case <-s.offers:
			continue
		default:
		}
		break
	}
	return s.joinOffer(ctx, offer)
}

// Rejoins delivers the reason of every rejoin message (node_failed, drain).
func (s *WSSignaler) Rejoins() <-chan string { return s.rejoins }

// Node is the SFU node the last joined message named.
func (s *WSSignaler) Node() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.node
}

func (s *WSSignaler) readLoop() {
	ctx := context.Background()
	for {
		_, b, err := s.ws.Read(ctx)
		if err != nil {
			select {
			case s.errc <- err:
			default:
			}
			return
		}
		var m wsMsg
		if json.Unmarshal(b, &m) != nil {
			continue
		}
		switch m.Type {
		case "joined":
			s.mu.Lock()
			s.node, s.rejoining = m.Node, false
			s.mu.Unlock()
			select {
			case s.joined <- struct{}{}:
			default:
			}
		case "rejoin":
			s.mu.Lock()
			s.rejoining = true
			s.mu.Unlock()
			select {
			case s.rejoins <- m.Reason:
			default:
			}
		case "answer":
			select {
			case s.answer <- m.SDP:
			default:
			}
		case "offer":
			s.mu.Lock()
			stale := s.rejoining
			s.mu.Unlock()
			if stale {
				continue
			}
			select {
			case s.offers <- m.SDP:
			default:
			}
		case "error":
			if m.Fatal || m.Class == "unauthorized" || m.Class == "unavailable" {
				select {
				case s.errc <- fmt.Errorf("loadgen: signal: %s: %s", m.Class, m.Message):
				default:
				}
			}
		}
	}
}

// Offers delivers the node's offers.
func (s *WSSignaler) Offers() <-chan string { return s.offers }

// LayerRequest is signal's layer message (docs/signal.md): the simulcast
// layer, or the size the client shows it at, of a received track.
type LayerRequest struct {
	Track    string `json:"track"`
	StreamID string `json:"streamId,omitempty"`
	MaxLayer *int   `json:"maxLayer,omitempty"`
	Width    int    `json:"width,omitempty"`
	Height   int    `json:"height,omitempty"`
}

// Layer sends a layer message. The server answers only a refusal, with a
// non-fatal error message, which the signaler does not report.
func (s *WSSignaler) Layer(ctx context.Context, r LayerRequest) error {
	b, err := json.Marshal(struct {
		Type string `json:"type"`
		LayerRequest
	}{"layer", r})
	if err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.ws.Write(ctx, websocket.MessageText, b)
}

// Answer sends the client's answer.
func (s *WSSignaler) Answer(ctx context.Context, sdp string) error {
	return s.send(ctx, wsMsg{Type: "answer", SDP: sdp})
}

// Close leaves and closes the WebSocket.
func (s *WSSignaler) Close() error {
	var err error
	s.once.Do(func() {
		if s.ws == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = s.send(ctx, wsMsg{Type: "leave"})
		cancel()
		err = s.ws.Close(websocket.StatusNormalClosure, "bye")
		if errors.Is(err, context.Canceled) {
			err = nil
		}
		s.ws.CloseNow()
		s.wg.Wait()
	})
	return nil
}
