package signal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// outQueue bounds the messages waiting for one client's writer. Offers,
// answers and candidates that do not fit end the session (a client that
// cannot keep up would desynchronize); room events that do not fit are
// dropped and counted.
const outQueue = 128

// writeTimeout bounds one WebSocket write.
const writeTimeout = 10 * time.Second

// maxStrikes is how many rate-limited messages a connection may send before
// it is closed.
const maxStrikes = 50

// session is one client's WebSocket connection. The reader loop (run) owns
// the protocol state; the writer loop drains out.
type session struct {
	s      *Server
	conn   *websocket.Conn
	client netip.Addr
	ctx    context.Context
	cancel context.CancelCauseFunc
	out    chan ServerMessage

	bucket  bucket
	strikes int
	// joinSeen is set by the reader when a join arrives; the join timer
	// reads it.
	joinSeen atomic.Bool
	// relinking is set while releaseSFU closes the session's old link
	// (p2proom.go): the node's close of it does not end the session.
	relinking atomic.Bool

	// orderMu is held from sending a client offer to the node until its
	// answer is queued, and by node offers and candidates while they are
	// queued. NATS hands the request's reply and the session's messages to
	// different goroutines, so without it a node offer sent after its
	// answer could reach the client first, which would take it for glare.
	orderMu sync.Mutex

	mu     sync.Mutex // guards link, node, claims, closed, pid
	link   Link
	node   Node
	claims Claims
	joined bool
	pid    string
}

func newSession(s *Server, conn *websocket.Conn, client netip.Addr) *session {
	ctx, cancel := context.WithCancelCause(s.ctx)
	return &session{s: s, conn: conn, client: client, ctx: ctx, cancel: cancel,
		out:    make(chan ServerMessage, outQueue),
		bucket: newBucket(s.cfg.MessageRate, s.cfg.MessageBurst, s.cfg.Now())}
}

// run serves the connection until the client leaves or fails, the node
// ends the session or the server closes.
func (ss *session) run() {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); ss.writeLoop() }()
	go func() { defer wg.Done(); ss.pingLoop() }()
	joinTimer := time.AfterFunc(ss.s.cfg.JoinTimeout, ss.joinExpired)
	err := ss.readLoop()
	joinTimer.Stop()
	ss.mu.Lock()
	link, node, room, joined, pid := ss.link, ss.node, ss.claims.Room, ss.joined, ss.pid
	ss.link, ss.joined = nil, false
	ss.mu.Unlock()
	if joined {
		ss.s.apiLeft(room, pid, err)
	}
	if link != nil {
		_ = link.Close()
	}
	if joined {
		ss.s.unplace(room, node.ID)
	}
	ss.cancel(err)
	wg.Wait()
	_ = ss.conn.CloseNow()
}

func (ss *session) readLoop() error {
	for {
		typ, data, err := ss.conn.Read(ss.ctx)
		if err != nil {
			if websocket.CloseStatus(err) == websocket.StatusMessageTooBig {
				ss.s.m.badMessages.WithLabelValues("too_large").Inc()
			}
			return err
		}
		if !ss.bucket.take(ss.s.cfg.Now()) {
			ss.s.m.rateLimited.Inc()
			if ss.strikes++; ss.strikes > maxStrikes {
				return ss.fail(ErrRateLimited)
			}
			ss.send(errorMessage(ErrRateLimited, false), false)
			continue
		}
		if typ != websocket.MessageText {
			ss.s.m.badMessages.WithLabelValues("binary").Inc()
			ss.send(errorMessage(fmt.Errorf("%w: binary message", ErrMessage), false), false)
			continue
		}
		m, err := DecodeClient(data)
		if err != nil {
			ss.s.m.badMessages.WithLabelValues("decode").Inc()
			ss.send(errorMessage(err, false), false)
			continue
		}
		ss.s.m.messages.WithLabelValues(m.Type).Inc()
		if m.Type == TypeJoin {
			ss.joinSeen.Store(true)
		}
		if err := ss.handle(m); err != nil {
			if errors.Is(err, errLeave) {
				return nil
			}
			fatal := !errors.Is(err, ErrMessage) && !errors.Is(err, ErrSDP) && !errors.Is(err, ErrState) &&
				!errors.Is(err, ErrForbidden) && !errors.Is(err, ErrRejected)
			if !fatal {
				ss.s.m.badMessages.WithLabelValues("request").Inc()
				ss.send(errorMessage(err, false), false)
				continue
			}
			return ss.fail(err)
		}
	}
}

// joinExpired ends a session that has sent no join by the join timeout:
// an open WebSocket costs a descriptor and three goroutines, and one that
// never joins is of no use to anyone.
func (ss *session) joinExpired() {
	if ss.joinSeen.Load() {
		return
	}
	ss.s.m.joinTimeouts.Inc()
	ss.s.log.Debug("signal: no join in time", "client", ss.client, "timeout", ss.s.cfg.JoinTimeout)
	// The writer writes the fatal error, closes the socket and cancels the
	// session, which ends the read loop.
	ss.send(errorMessage(fmt.Errorf("%w (%v)", ErrJoinTimeout, ss.s.cfg.JoinTimeout), true), true)
}

// errLeave ends the read loop after a leave.
var errLeave = errors.New("leave")

// fail sends a fatal error and returns it; the writer closes the connection
// after writing it.
func (ss *session) fail(err error) error {
	ss.s.log.Debug("signal session failed", "client", ss.client, "err", err)
	ss.send(errorMessage(err, true), true)
	return err
}

// clientSDP parses the offer or answer of m and refuses one that sends
// media when the token does not allow publishing.
func clientSDP(m ClientMessage, publish bool) (Offer, error) {
	o, err := ParseOffer(m.SDP)
	if err != nil {
		return Offer{}, err
	}
	if o.Sends && !publish {
		return Offer{}, fmt.Errorf("%w: the token does not allow publishing (%s sends media)", ErrForbidden, m.Type)
	}
	return o, nil
}

func (ss *session) handle(m ClientMessage) error {
	ss.mu.Lock()
	joined, link, node, claims := ss.joined, ss.link, ss.node, ss.claims
	ss.mu.Unlock()
	if m.Type == TypePing {
		ss.send(ServerMessage{Type: TypePong}, false)
		return nil
	}
	if m.Type == TypeJoin {
		if joined {
			return fmt.Errorf("%w: already joined", ErrState)
		}
		return ss.join(m.Token)
	}
	if joined && isP2PType(m.Type) {
		return ss.handleP2P(m)
	}
	if !joined || link == nil {
		return fmt.Errorf("%w: %s before join", ErrState, m.Type)
	}
	ctx, cancel := context.WithTimeout(ss.ctx, ss.s.cfg.RequestTimeout)
	defer cancel()
	switch m.Type {
	case TypeOffer:
		o, err := clientSDP(m, claims.Publish)
		if err != nil {
			return err
		}
		ss.orderMu.Lock()
		defer ss.orderMu.Unlock()
		answer, err := link.Offer(ctx, m.SDP, o.Ufrag)
		if err != nil {
			return ss.nodeError(err)
		}
		if answer, err = RewriteSDP(answer, node.Public); err != nil {
			return ss.nodeError(err)
		}
		ss.send(ServerMessage{Type: TypeAnswer, SDP: answer}, true)
	case TypeAnswer:
		if _, err := clientSDP(m, claims.Publish); err != nil {
			return err
		}
		if err := link.Answer(ctx, m.SDP); err != nil {
			return ss.nodeError(err)
		}
	case TypeCandidate:
		if err := link.Candidate(ctx, *m.Candidate); err != nil {
			return ss.nodeError(err)
		}
	case TypeLayer:
		ls, ok := link.(layerSetter)
		if !ok {
			return fmt.Errorf("%w: this backend takes no layer requests", ErrState)
		}
		r := LayerRequest{Track: m.Track, StreamID: m.StreamID, Width: m.Width, Height: m.Height}
		if m.MaxLayer != nil {
			r.MaxLayer = *m.MaxLayer
		}
		if err := ls.Layer(ctx, r); err != nil {
			return ss.nodeError(err)
		}
	case TypeLeave:
		ss.send(ServerMessage{Type: TypeBye}, true)
		return errLeave
	}
	return nil
}

func (ss *session) nodeError(err error) error {
	ss.s.m.nodeErrors.Inc()
	if errors.Is(err, ErrNode) || errors.Is(err, ErrRejected) || errors.Is(err, ErrForbidden) || errors.Is(err, ErrState) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrNode, err)
}

// joinNode asks node, within Config.RequestTimeout, to take this client
// into the room of claims as participant pid.
func (ss *session) joinNode(node Node, claims Claims, pid string) (Link, error) {
	ctx, cancel := context.WithTimeout(ss.ctx, ss.s.cfg.RequestTimeout)
	defer cancel()
	var addr string
	if ss.client.IsValid() {
		addr = ss.client.String()
	}
	return ss.s.cfg.Backend.Join(ctx, node, JoinRequest{Room: claims.Room, Identity: claims.Identity,
		Session: pid, Publish: claims.Publish, Subscribe: claims.Subscribe, Client: addr}, ss.nodeEvent)
}

func (ss *session) join(token string) error {
	claims, err := ParseToken(ss.s.cfg.Key, token, ss.s.cfg.Now())
	if err != nil {
		ss.s.m.tokenRejected.WithLabelValues(tokenReason(err)).Inc()
		return err
	}
	node, err := ss.s.place(claims.Room, ss.client)
	if err != nil {
		return err
	}
	pid := randomID(8)
	link, err := ss.joinNode(node, claims, pid)
	if err != nil {
		ss.s.unplace(claims.Room, node.ID)
		return ss.nodeError(err)
	}
	ss.mu.Lock()
	ss.link, ss.node, ss.claims, ss.joined, ss.pid = link, node, claims, true, pid
	ss.mu.Unlock()
	ss.s.apiJoined(ss, pid, claims, node)
	var ice []ICEServer
	if f := ss.s.cfg.ICEServers; f != nil {
		ice = f(claims.Identity)
	}
	pub, sub := claims.Publish, claims.Subscribe
	var mode string
	if ss.s.cfg.P2P {
		mode = ModeP2P // a mode message follows
	}
	ss.send(ServerMessage{Type: TypeJoined, Room: claims.Room, Identity: claims.Identity, ParticipantID: pid,
		Node: node.ID, Region: node.Region, Publish: &pub, Subscribe: &sub, ICEServers: ice, Mode: mode}, true)
	ss.s.p2pJoined(ss, pid, claims)
	if sn, ok := link.(snapshotter); ok {
		for _, ev := range sn.Snapshot() {
			ss.nodeEvent(ev)
		}
	}
	ss.s.log.Info("signal join", "room", claims.Room, "identity", claims.Identity, "participant", pid,
		"node", node.ID, "client", ss.client)
	return nil
}

// nodeEvent is the sink for the node's events about this session. It runs
// on the backend's goroutine and only queues.
func (ss *session) nodeEvent(ev NodeEvent) {
	ss.mu.Lock()
	public, room := ss.node.Public, ss.claims.Room
	ss.mu.Unlock()
	if ev.Kind == NodeOffer || ev.Kind == NodeCandidate {
		ss.orderMu.Lock()
		defer ss.orderMu.Unlock()
	}
	switch ev.Kind {
	case NodeOffer:
		sdp, err := RewriteSDP(ev.SDP, public)
		if err != nil {
			ss.s.m.nodeErrors.Inc()
			ss.send(errorMessage(fmt.Errorf("%w: node offer: %w", ErrNode, err), false), false)
			return
		}
		ss.send(ServerMessage{Type: TypeOffer, SDP: sdp}, true)
	case NodeCandidate:
		c := ev.Candidate
		c.Candidate = rewriteCandidate(c.Candidate, public)
		ss.send(ServerMessage{Type: TypeCandidate, Candidate: &c}, true)
	case NodeParticipant:
		p := ev.Participant
		ss.send(ServerMessage{Type: TypeParticipant, Event: ev.Event, Participant: &p}, false)
	case NodeTrack:
		ss.s.reg.track(room, ev)
		p, tr := ev.Participant, ev.Track
		ss.send(ServerMessage{Type: TypeTrack, Event: ev.Event, Participant: &p, Track: &tr}, false)
	case NodeSpeakers:
		ss.send(ServerMessage{Type: TypeSpeakers, Speakers: ev.Speakers}, false)
	case NodeMoved:
		ss.mu.Lock()
		pid := ss.pid
		if ss.joined {
			ss.node.ID = ev.Node
		}
		ss.mu.Unlock()
		ss.s.reg.moved(room, pid, ev.Node)
	case NodeRejoin:
		reason := RejoinDrain
		if ev.Reason == RejoinNodeFailed {
			reason = RejoinNodeFailed
		}
		ss.rejoin(ev.Node, reason)
	case NodeClosed:
		if ss.relinking.Load() {
			return
		}
		err := ev.Err
		if err == nil {
			err = errors.New("session ended by the node")
		}
		ss.send(errorMessage(fmt.Errorf("%w: %w", ErrNode, err), true), true)
	}
}

// send queues m for the writer. A critical message that does not fit ends
// the session; another is dropped and counted.
func (ss *session) send(m ServerMessage, critical bool) {
	select {
	case ss.out <- m:
	default:
		if critical {
			ss.s.m.dropped.WithLabelValues("slow_client_closed").Inc()
			ss.cancel(errors.New("client too slow"))
			return
		}
		ss.s.m.dropped.WithLabelValues("queue_full").Inc()
	}
}

func (ss *session) writeLoop() {
	for {
		select {
		case <-ss.ctx.Done():
			// Flush what is queued (a final error, a bye) briefly.
			for {
				select {
				case m := <-ss.out:
					if ss.write(m) != nil {
						return
					}
					if m.Fatal || m.Type == TypeBye {
						_ = ss.conn.Close(websocket.StatusNormalClosure, m.Type)
						return
					}
				default:
					return
				}
			}
		case m := <-ss.out:
			if err := ss.write(m); err != nil {
				ss.cancel(err)
				return
			}
			if m.Fatal || m.Type == TypeBye {
				_ = ss.conn.Close(websocket.StatusNormalClosure, m.Type)
				ss.cancel(errors.New("closed"))
				return
			}
		}
	}
}

// pingInterval is how often an idle client is pinged (WebSocket ping,
// RFC 6455 section 5.5.2); a client that does not pong within
// pingTimeout is gone, and its session ends (leaving the room on the node).
const (
	pingInterval = 20 * time.Second
	pingTimeout  = 15 * time.Second
)

func (ss *session) pingLoop() {
	t := time.NewTicker(pingInterval)
	defer t.Stop()
	for {
		select {
		case <-ss.ctx.Done():
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(ss.ctx, pingTimeout)
			err := ss.conn.Ping(ctx)
			cancel()
			if err != nil && ss.ctx.Err() == nil {
				ss.s.log.Debug("signal client stopped answering pings", "client", ss.client, "err", err)
				// Closing the connection ends the read loop, which ends the session.
				_ = ss.conn.CloseNow()
				return
			}
		}
	}
}

func (ss *session) write(m ServerMessage) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	// The session context may already be done when flushing: bound the
	// write by time alone.
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	return ss.conn.Write(ctx, websocket.MessageText, b)
}

// bucket is a token bucket (rate per second, burst), owned by the reader.
type bucket struct {
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func newBucket(rate float64, burst int, now time.Time) bucket {
	return bucket{rate: rate, burst: float64(burst), tokens: float64(burst), last: now}
}

func (b *bucket) take(now time.Time) bool {
	if d := now.Sub(b.last).Seconds(); d > 0 {
		b.tokens += d * b.rate
		if b.tokens > b.burst {
			b.tokens = b.burst
		}
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
