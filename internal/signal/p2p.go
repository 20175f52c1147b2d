package signal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/traverse-rtc/traverse/internal/signal/p2pwire"
)

// The peer-to-peer rendezvous (client/p2p): GET /p2p opens a WebSocket on
// which a peer registers under the identity of its token, in the token's
// room (the rendezvous namespace), and exchanges messages with the other
// peers registered in that room by name. The server vouches for names: a
// message arrives marked with its sender's token identity, never with a
// name the sender chose. It relays the payload (the peers' handshake and
// candidates) without reading it.
//
//	-> {"type":"register","token":"<JWT>"}
//	<- {"type":"registered","room":"r","name":"alice"}
//	-> {"type":"watch","name":"bob"}           (answered once bob is registered)
//	<- {"type":"present","name":"bob"}
//	-> {"type":"send","to":"bob","data":{...}}  (needs the publish right)
//	<- {"type":"msg","from":"alice","data":{...}}   (at bob)
//	<- {"type":"error","error":"..."}
//
// A newer registration of the same name in the same room replaces the
// older one, whose connection is closed. Limits: Config.MaxMessage per
// message, Config.MessageRate/MessageBurst per connection (as /ws), a
// queue of p2pOutQueue messages per peer (a message to a peer whose queue
// is full is dropped and the sender told), JoinTimeout to register.

// P2PMessage is one message of the /p2p protocol, both ways (defined in
// p2pwire, which client/p2p shares).
type P2PMessage = p2pwire.Message

// DecodeP2P parses and validates a peer's /p2p message.
func DecodeP2P(b []byte) (P2PMessage, error) {
	var m P2PMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%w: %v", ErrMessage, err)
	}
	switch m.Type {
	case "register":
		if m.Token == "" || len(m.Token) > maxTokenLen {
			return m, fmt.Errorf("%w: register needs a token", ErrMessage)
		}
	case "watch":
		if !validIdentity(m.Name) {
			return m, fmt.Errorf("%w: bad name", ErrMessage)
		}
	case "send":
		if !validIdentity(m.To) {
			return m, fmt.Errorf("%w: bad recipient", ErrMessage)
		}
		if len(m.Data) == 0 || !json.Valid(m.Data) {
			return m, fmt.Errorf("%w: send needs JSON data", ErrMessage)
		}
	default:
		return m, fmt.Errorf("%w: unknown p2p type %.32q", ErrMessage, m.Type)
	}
	return m, nil
}

// p2pOutQueue bounds the messages waiting for one peer's writer.
const p2pOutQueue = 64

type p2pHub struct {
	mu      sync.Mutex // guards peers, watches
	peers   map[[2]string]*p2pPeer
	watches map[[2]string][]*p2pPeer // room, name -> who waits for it
	msgs    *prometheus.CounterVec   // by result
}

func newP2PHub(reg prometheus.Registerer) (*p2pHub, error) {
	h := &p2pHub{peers: map[[2]string]*p2pPeer{}, watches: map[[2]string][]*p2pPeer{},
		msgs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "traverse_signal_p2p_messages_total",
			Help: "Peer-to-peer rendezvous messages, by result (relayed, absent, queue_full, forbidden, bad, token, rate_limited, registered, replaced)."},
			[]string{"result"})}
	return h, reg.Register(h.msgs)
}

type p2pPeer struct {
	room, name string
	out        chan P2PMessage
	cancel     context.CancelFunc
}

func (p *p2pPeer) offer(m P2PMessage) bool {
	select {
	case p.out <- m:
		return true
	default:
		return false
	}
}

func (s *Server) serveP2P(w http.ResponseWriter, r *http.Request) {
	conn, done := s.acceptWS(w, r)
	if conn == nil {
		return
	}
	defer done()
	defer conn.CloseNow()
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()

	peer := &p2pPeer{out: make(chan P2PMessage, p2pOutQueue), cancel: cancel}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case m := <-peer.out:
				b, _ := json.Marshal(m)
				wctx, wc := context.WithTimeout(ctx, writeTimeout)
				err := conn.Write(wctx, websocket.MessageText, b)
				wc()
				if err != nil {
					cancel()
					return
				}
			}
		}
	}()
	defer wg.Wait()
	defer cancel()
	h := s.p2p
	registered := false
	defer func() {
		if registered {
			h.leave(peer)
		}
	}()
	regTimer := time.AfterFunc(s.cfg.JoinTimeout, func() {
		if !h.isRegistered(peer) {
			s.m.joinTimeouts.Inc()
			cancel()
		}
	})
	defer regTimer.Stop()
	bk := newBucket(s.cfg.MessageRate, s.cfg.MessageBurst, s.cfg.Now())
	strikes := 0
	fail := func(result string, err error) {
		h.msgs.WithLabelValues(result).Inc()
		peer.offer(P2PMessage{Type: "error", Error: err.Error()})
	}
	var claims Claims
	for {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			return
		}
		if !bk.take(s.cfg.Now()) {
			s.m.rateLimited.Inc()
			if strikes++; strikes > maxStrikes {
				return
			}
			fail("rate_limited", ErrRateLimited)
			continue
		}
		if typ != websocket.MessageText {
			fail("bad", fmt.Errorf("%w: binary message", ErrMessage))
			continue
		}
		m, err := DecodeP2P(data)
		if err != nil {
			fail("bad", err)
			continue
		}
		switch {
		case m.Type == "register":
			if registered {
				fail("bad", fmt.Errorf("%w: already registered", ErrState))
				continue
			}
			c, err := ParseToken(s.cfg.Key, m.Token, s.cfg.Now())
			if err != nil {
				s.m.tokenRejected.WithLabelValues(tokenReason(err)).Inc()
				h.msgs.WithLabelValues("token").Inc()
				// Written here, not queued: the connection closes next.
				b, _ := json.Marshal(P2PMessage{Type: "error", Error: err.Error()})
				wctx, wc := context.WithTimeout(ctx, writeTimeout)
				_ = conn.Write(wctx, websocket.MessageText, b)
				wc()
				return
			}
			claims = c
			peer.room, peer.name = c.Room, c.Identity
			h.register(peer)
			registered = true
			peer.offer(P2PMessage{Type: "registered", Room: c.Room, Name: c.Identity})
		case !registered:
			fail("bad", fmt.Errorf("%w: register first", ErrState))
		case m.Type == "watch":
			h.watch(peer, m.Name)
		case m.Type == "send":
			if !claims.Publish {
				fail("forbidden", fmt.Errorf("%w: token has no publish right", ErrForbidden))
				continue
			}
			if err := h.relay(peer, m.To, m.Data); err != nil {
				fail(p2pResult(err), err)
				continue
			}
			h.msgs.WithLabelValues("relayed").Inc()
		}
	}
}

var (
	errP2PAbsent    = errors.New("signal: peer not registered")
	errP2PQueueFull = errors.New("signal: peer's queue is full")
)

func p2pResult(err error) string {
	if errors.Is(err, errP2PAbsent) {
		return "absent"
	}
	return "queue_full"
}

func (h *p2pHub) register(p *p2pPeer) {
	k := [2]string{p.room, p.name}
	h.mu.Lock()
	old := h.peers[k]
	h.peers[k] = p
	waiters := h.watches[k]
	delete(h.watches, k)
	h.mu.Unlock()
	if old != nil {
		h.msgs.WithLabelValues("replaced").Inc()
		old.offer(P2PMessage{Type: "error", Error: "replaced by a newer registration"})
		old.cancel()
	}
	h.msgs.WithLabelValues("registered").Inc()
	for _, w := range waiters {
		w.offer(P2PMessage{Type: "present", Name: p.name})
	}
}

func (h *p2pHub) isRegistered(p *p2pPeer) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.peers[[2]string{p.room, p.name}] == p
}

func (h *p2pHub) leave(p *p2pPeer) {
	k := [2]string{p.room, p.name}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.peers[k] == p {
		delete(h.peers, k)
	}
	for wk, ws := range h.watches {
		if wk[0] != p.room {
			continue
		}
		kept := ws[:0]
		for _, w := range ws {
			if w != p {
				kept = append(kept, w)
			}
		}
		if len(kept) == 0 {
			delete(h.watches, wk)
		} else {
			h.watches[wk] = kept
		}
	}
}

// watch answers present now, or when name registers (one watch per peer
// and name; a peer watching many names is bounded by its message rate).
func (h *p2pHub) watch(p *p2pPeer, name string) {
	k := [2]string{p.room, name}
	h.mu.Lock()
	if h.peers[k] != nil {
		h.mu.Unlock()
		p.offer(P2PMessage{Type: "present", Name: name})
		return
	}
	for _, w := range h.watches[k] {
		if w == p {
			h.mu.Unlock()
			return
		}
	}
	if len(h.watches[k]) < p2pOutQueue {
		h.watches[k] = append(h.watches[k], p)
	}
	h.mu.Unlock()
}

func (h *p2pHub) relay(from *p2pPeer, to string, data json.RawMessage) error {
	h.mu.Lock()
	dst := h.peers[[2]string{from.room, to}]
	h.mu.Unlock()
	if dst == nil {
		return fmt.Errorf("%w: %s", errP2PAbsent, to)
	}
	if !dst.offer(P2PMessage{Type: "msg", From: from.name, Data: data}) {
		return fmt.Errorf("%w: %s", errP2PQueueFull, to)
	}
	return nil
}
