// Package bus is how signal servers and SFU nodes talk: a NATS connection
// (to an embedded nats-server in one process, or to an external cluster),
// and the one definition of the subjects and message types that cross it.
// docs/bus.md documents the protocol.
//
// Messages are JSON. Every message read from the bus goes through Decode,
// which validates it; bad messages are counted and dropped. Errors that
// cross the bus carry a Status class.
package bus

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/traverse-rtc/traverse/internal/config"
)

// Config says how to reach the bus.
type Config struct {
	// URLs are the NATS servers ("nats://host:port"); any one of a
	// cluster is enough, more give failover.
	URLs []string
	// Name is the connection name the NATS server shows (the role and
	// node id); empty is allowed.
	Name string
	// RequestTimeout bounds a Request when its context has no deadline;
	// default 5 s.
	RequestTimeout time.Duration
	// Workers is how many requests a HandleRequests subscription serves
	// at once (requests of one session are always served in order);
	// default 8.
	Workers int

	// InboxPrefix replaces _INBOX as the prefix of this connection's reply
	// subjects (controllers use ControllerInboxPrefix). Default _INBOX.
	InboxPrefix string

	// Identity is the credential of an in-process connection (serve's
	// roles get theirs from the embedded server, Embedded.NewIdentity).
	Identity *Identity
	// CredsFile is a credentials file: one written by "traverse bus"
	// (an nkey seed with its role), a bare nkey seed file, or a NATS
	// .creds file (user JWT and seed) of an operator-managed cluster.
	// Ignored when Identity is set. Empty with no Identity: no
	// credentials (only a server that accepts anyone lets that in).
	CredsFile string
	// TLSCA is a PEM file of the CAs that sign the servers' certificates;
	// set, the connection requires TLS. Empty with tls:// URLs: the
	// system roots.
	TLSCA string
	// TLSCert and TLSKey are a client certificate and key (PEM files) for
	// servers that verify clients (mutual TLS).
	TLSCert, TLSKey string
	// TLS, when set, is used instead of the TLS files (in-process
	// connections to a TLS embedded server).
	TLS *tls.Config
}

func (c *Config) validate() error {
	if len(c.URLs) == 0 {
		return ErrNoURL
	}
	config.Default(&c.RequestTimeout, 5*time.Second)
	config.Default(&c.Workers, 8)
	return nil
}

// Client is a connection to the bus with typed helpers for every subject.
// It is safe for concurrent use.
type Client struct {
	cfg Config
	nc  *nats.Conn
	log *slog.Logger

	bad       atomic.Uint64
	asyncErrs atomic.Uint64

	mu     sync.Mutex // guards subs and closed
	subs   map[*Subscription]struct{}
	closed bool
}

// Connect connects to the bus.
func Connect(cfg Config, log *slog.Logger) (*Client, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{cfg: cfg, log: log, subs: map[*Subscription]struct{}{}}
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(false),
		// The server refuses a subject this connection's role may not use
		// asynchronously: say so, a misconfigured node id shows here.
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			c.asyncErrs.Add(1)
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			c.log.Warn("bus: server refused", "subject", subject, "err", err)
		}),
	}
	if cfg.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(cfg.InboxPrefix))
	}
	copts, err := cfg.credentialOptions()
	if err != nil {
		return nil, err
	}
	opts = append(opts, copts...)
	nc, err := nats.Connect(strings.Join(cfg.URLs, ","), opts...)
	if err != nil {
		return nil, fmt.Errorf("bus: connect %v: %w", cfg.URLs, err)
	}
	c.nc = nc
	return c, nil
}

// credentialOptions turns Identity, CredsFile and the TLS files into
// nats.go options.
func (c *Config) credentialOptions() ([]nats.Option, error) {
	var opts []nats.Option
	switch {
	case c.Identity != nil:
		opts = append(opts, nats.Nkey(c.Identity.Public(), c.Identity.sign))
	case c.CredsFile != "":
		b, err := os.ReadFile(c.CredsFile)
		if err != nil {
			return nil, fmt.Errorf("bus: credentials: %w", err)
		}
		jwt := bytes.Contains(b, []byte("BEGIN NATS USER JWT"))
		wipe(b)
		if jwt {
			opts = append(opts, nats.UserCredentials(c.CredsFile))
			break
		}
		id, err := LoadIdentity(c.CredsFile)
		if errors.Is(err, ErrCredentials) {
			// A bare seed file (nk -gen user): no role lines.
			o, nerr := nats.NkeyOptionFromSeed(c.CredsFile)
			if nerr != nil {
				return nil, fmt.Errorf("bus: credentials %s: %w", c.CredsFile, nerr)
			}
			opts = append(opts, o)
			break
		}
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.Nkey(id.Public(), id.sign))
	}
	if c.TLS != nil {
		return append(opts, nats.Secure(c.TLS)), nil
	}
	if c.TLSCA != "" {
		opts = append(opts, nats.RootCAs(c.TLSCA))
	}
	if c.TLSCert != "" || c.TLSKey != "" {
		if c.TLSCert == "" || c.TLSKey == "" {
			return nil, fmt.Errorf("%w: a client certificate needs both its certificate and key files", ErrCredentials)
		}
		opts = append(opts, nats.ClientCert(c.TLSCert, c.TLSKey))
	}
	return opts, nil
}

// Conn returns the NATS connection, for health checks.
func (c *Client) Conn() *nats.Conn { return c.nc }

// BadMessages returns how many messages this client dropped because they
// did not decode or validate.
func (c *Client) BadMessages() uint64 { return c.bad.Load() }

// Refused returns how many asynchronous errors the server sent this
// client, such as a publish or subscription its role may not make.
func (c *Client) Refused() uint64 { return c.asyncErrs.Load() }

// Close unsubscribes everything, waits for running handlers and closes the
// connection. It is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	subs := make([]*Subscription, 0, len(c.subs))
	for s := range c.subs {
		subs = append(subs, s)
	}
	c.mu.Unlock()
	for _, s := range subs {
		s.Unsubscribe()
	}
	// Flush what was published, but do not wait on a server that is gone
	// (in serve the embedded one may stop first).
	var err error
	if c.nc.IsConnected() {
		err = c.nc.FlushTimeout(time.Second)
	}
	c.nc.Close()
	if errors.Is(err, nats.ErrConnectionClosed) {
		err = nil
	}
	return err
}

// Subscription is one subscription; Unsubscribe ends it and waits for its
// handlers.
type Subscription struct {
	c     *Client
	ns    *nats.Subscription
	once  sync.Once
	stop  func() // stops workers, if any
	drain sync.WaitGroup
}

// Unsubscribe ends the subscription and waits for handlers that are
// running. It is idempotent; do not call it from the subscription's own
// handler.
func (s *Subscription) Unsubscribe() {
	s.once.Do(func() {
		_ = s.ns.Unsubscribe()
		s.forget()
	})
}

// forget stops s's workers, waits for them and drops s from its client.
func (s *Subscription) forget() {
	if s.stop != nil {
		s.stop()
	}
	s.drain.Wait()
	s.c.mu.Lock()
	delete(s.c.subs, s)
	s.c.mu.Unlock()
}

// newSubscription returns a subscription that Close ends; the caller gives
// it to listen.
func (c *Client) newSubscription() (*Subscription, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, nats.ErrConnectionClosed
	}
	s := &Subscription{c: c}
	c.subs[s] = struct{}{}
	return s, nil
}

// listen subscribes s to subject with handler h; if the server refuses, s
// is forgotten. Once the server has the subscription, messages published
// after listen returns (by any connection) reach it.
func (c *Client) listen(s *Subscription, subject string, h nats.MsgHandler) (*Subscription, error) {
	ns, err := c.nc.Subscribe(subject, h)
	if err != nil {
		s.forget()
		return nil, fmt.Errorf("bus: subscribe %s: %w", subject, err)
	}
	s.ns = ns
	_ = c.nc.Flush()
	return s, nil
}

// publish validates v and sends it on subject: the bus package publishes
// only messages that Decode accepts.
func (c *Client) publish(subject string, v validator) error {
	if err := v.Validate(); err != nil {
		return err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("bus: encode %s: %w", subject, err)
	}
	if err := c.nc.Publish(subject, b); err != nil {
		return fmt.Errorf("bus: publish %s: %w", subject, err)
	}
	return nil
}

// subscribe calls fn with every valid message of type T on subject, one at a
// time in arrival order (NATS delivers a subscription's messages on one
// goroutine). check, when set, must also accept the message and the subject
// it came on.
func subscribe[T any, PT interface {
	*T
	validator
}](c *Client, subject string, check func(subject string, v *T) error, fn func(T)) (*Subscription, error) {
	s, err := c.newSubscription()
	if err != nil {
		return nil, err
	}
	return c.listen(s, subject, func(m *nats.Msg) {
		v, err := Decode[T, PT](m.Data)
		if err == nil && check != nil {
			err = check(m.Subject, &v)
		}
		if err != nil {
			c.bad.Add(1)
			c.log.Debug("bus: dropping bad message", "subject", m.Subject, "err", err)
			return
		}
		fn(v)
	})
}

// ownSubject is the subscribe check of a message published on a subject
// it names (own): it refuses one that came on another subject. The server
// lets node N publish under N's subjects only, so this is what stops N
// from speaking for another node.
func ownSubject[T any](what string, own func(*T) string) func(string, *T) error {
	return func(subject string, m *T) error {
		if want := own(m); subject != want {
			return fmt.Errorf("%w: %s for %s on %s", ErrBadMessage, what, want, subject)
		}
		return nil
	}
}

// AnnounceNode publishes a node announcement on a.Node's subject.
func (c *Client) AnnounceNode(a NodeAnnounce) error {
	return c.publish(NodeAnnounceSubject(a.Node), &a)
}

// SubscribeNodes calls fn with every node announcement (see NodeTable). An
// announcement naming another node than its subject's is dropped.
func (c *Client) SubscribeNodes(fn func(NodeAnnounce)) (*Subscription, error) {
	return subscribe[NodeAnnounce](c, NodeAnnounceSubject("*"),
		ownSubject("node announcement", func(a *NodeAnnounce) string { return NodeAnnounceSubject(a.Node) }), fn)
}

// AnnounceSession publishes a session's ufrag -> node mapping on a.Node's
// subject.
func (c *Client) AnnounceSession(a SessionAnnounce) error {
	return c.publish(SessionAnnounceSubject(a.Node), &a)
}

// SubscribeSessions calls fn with every session announcement.
func (c *Client) SubscribeSessions(fn func(SessionAnnounce)) (*Subscription, error) {
	return subscribe[SessionAnnounce](c, SessionAnnounceSubject("*"),
		ownSubject("session announcement", func(a *SessionAnnounce) string { return SessionAnnounceSubject(a.Node) }), fn)
}

// PublishSession sends node's message about m.Session to the signal server
// that holds the session.
func (c *Client) PublishSession(node string, m SessionMessage) error {
	if !ValidName(node) {
		return fmt.Errorf("%w: node %q", ErrBadSubjectToken, node)
	}
	if !ValidName(m.Session) {
		return fmt.Errorf("%w: session %q", ErrBadSubjectToken, m.Session)
	}
	return c.publish(SessionSubject(node, m.Session), &m)
}

// SubscribeSession calls fn with every message node sends about session.
// Messages about session from any other node do not reach fn.
func (c *Client) SubscribeSession(node, session string, fn func(SessionMessage)) (*Subscription, error) {
	if !ValidName(node) {
		return nil, fmt.Errorf("%w: node %q", ErrBadSubjectToken, node)
	}
	if !ValidName(session) {
		return nil, fmt.Errorf("%w: session %q", ErrBadSubjectToken, session)
	}
	return subscribe[SessionMessage](c, SessionSubject(node, session),
		func(_ string, m *SessionMessage) error {
			if m.Session != session {
				return fmt.Errorf("%w: message about session %q on %q's subject", ErrBadMessage, m.Session, session)
			}
			return nil
		}, fn)
}

// PublishRoomEvent publishes e on its node's subject of its room.
func (c *Client) PublishRoomEvent(e RoomEvent) error {
	if !ValidName(e.Node) {
		return fmt.Errorf("%w: room event without its node: %w", ErrBadMessage, ErrBadSubjectToken)
	}
	return c.publish(RoomEventsSubject(e.Node, e.Room), &e)
}

// SubscribeRoomEvents calls fn with the events of room from every node, or
// of every room when room is "*". An event naming another node or room
// than its subject's is dropped.
func (c *Client) SubscribeRoomEvents(room string, fn func(RoomEvent)) (*Subscription, error) {
	if room != "*" && !ValidName(room) {
		return nil, fmt.Errorf("%w: room %q", ErrBadSubjectToken, room)
	}
	return subscribe[RoomEvent](c, RoomEventsSubject("*", room),
		ownSubject("room event", func(e *RoomEvent) string { return RoomEventsSubject(e.Node, e.Room) }), fn)
}

// Request calls node and returns its reply. A reply carrying an error is
// returned as that *Error; no answer (no such node, timeout) is an *Error
// of StatusUnavailable.
func (c *Client) Request(ctx context.Context, node string, req Request) (Reply, error) {
	return call[Reply](ctx, c, node, NodeRPCSubject(node), "node", &req, true)
}

// A reply names the node that answered and may carry an error.
type reply interface {
	validator
	from() (node string, err *Error)
}

func (r *Reply) from() (string, *Error) { return r.Node, r.Error }

// call sends req to node on subject and returns the reply, which must
// name node; one carrying an error is returned as that *Error, no answer
// as an *Error of StatusUnavailable. what names the callee in errors. With
// retry, a request that finds no responder is sent again for up to
// noRespondersRetry.
func call[R any, PR interface {
	*R
	reply
}](ctx context.Context, c *Client, node, subject, what string, req validator, retry bool) (R, error) {
	var none R
	if !ValidName(node) {
		return none, Errorf(StatusBadRequest, "node %q: %v", node, ErrBadSubjectToken)
	}
	if err := req.Validate(); err != nil {
		return none, &Error{Status: StatusBadRequest, Message: err.Error()}
	}
	b, err := json.Marshal(req)
	if err != nil {
		return none, fmt.Errorf("bus: encode request: %w", err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.RequestTimeout)
		defer cancel()
	}
	m, err := c.nc.RequestWithContext(ctx, subject, b)
	// "No responders": the request reached no one (the node is between
	// two servers of a cluster, reconnecting after one died), so sending
	// it again is safe; retried for up to noRespondersRetry.
	for give := time.Now().Add(noRespondersRetry); retry && errors.Is(err, nats.ErrNoResponders) && time.Now().Before(give); {
		select {
		case <-ctx.Done():
		case <-time.After(noRespondersBackoff):
		}
		if ctx.Err() != nil {
			break
		}
		m, err = c.nc.RequestWithContext(ctx, subject, b)
	}
	if err != nil {
		return none, Errorf(StatusUnavailable, "%s %s: %v", what, node, err)
	}
	rep, err := Decode[R, PR](m.Data)
	if err == nil {
		if n, _ := PR(&rep).from(); n != node {
			err = fmt.Errorf("%w: reply names node %q", ErrBadMessage, n)
		}
	}
	if err != nil {
		c.bad.Add(1)
		return none, Errorf(StatusInternal, "%s %s: %v", what, node, err)
	}
	if _, e := PR(&rep).from(); e != nil {
		return rep, e
	}
	return rep, nil
}

// A request that finds no responder is sent again every noRespondersBackoff
// for up to noRespondersRetry: a node reconnecting to another server of
// its cluster is back within about one reconnect wait (250 ms).
const (
	noRespondersRetry   = 1500 * time.Millisecond
	noRespondersBackoff = 100 * time.Millisecond
)

// Handler serves one request. It returns the reply; a non-nil error
// becomes the reply's Error (classified by StatusOf). ctx is cancelled when
// the subscription ends.
type Handler func(ctx context.Context, req Request) (Reply, error)

// HandleRequests serves the requests sent to node. Requests of one session
// are served in order, requests of different sessions concurrently on up
// to Config.Workers goroutines. Invalid requests are answered with
// StatusBadRequest without reaching h.
func (c *Client) HandleRequests(node string, h Handler) (*Subscription, error) {
	if !ValidName(node) {
		return nil, fmt.Errorf("%w: node %q", ErrBadSubjectToken, node)
	}
	ctx, cancel := context.WithCancel(context.Background())
	queues := make([]chan *nats.Msg, c.cfg.Workers)
	s, err := c.newSubscription()
	if err != nil {
		cancel()
		return nil, err
	}
	var closeOnce sync.Once
	var qmu sync.RWMutex // guards sending on queues against their closing
	stopped := false
	for i := range queues {
		queues[i] = make(chan *nats.Msg, 64)
		s.drain.Add(1)
		go func(q chan *nats.Msg) {
			defer s.drain.Done()
			for m := range q {
				c.serve(ctx, node, m, h)
			}
		}(queues[i])
	}
	s.stop = func() {
		cancel()
		closeOnce.Do(func() {
			qmu.Lock()
			stopped = true
			for _, q := range queues {
				close(q)
			}
			qmu.Unlock()
		})
	}
	return c.listen(s, NodeRPCSubject(node), func(m *nats.Msg) {
		req, err := Decode[Request](m.Data)
		if err != nil {
			c.bad.Add(1)
			c.respond(m, Reply{Node: node, Error: &Error{Status: StatusBadRequest, Message: err.Error()}})
			return
		}
		hf := fnv.New32a()
		_, _ = hf.Write([]byte(req.Session))
		qmu.RLock()
		defer qmu.RUnlock()
		if stopped {
			c.respond(m, Reply{Node: node, Error: Errorf(StatusUnavailable, "node %s is stopping", node)})
			return
		}
		select {
		case queues[hf.Sum32()%uint32(len(queues))] <- m:
		default:
			c.respond(m, Reply{Node: node, Error: Errorf(StatusUnavailable, "node %s is overloaded", node)})
		}
	})
}

func (c *Client) serve(ctx context.Context, node string, m *nats.Msg, h Handler) {
	req, err := Decode[Request](m.Data)
	if err != nil { // decoded once already; cannot happen
		return
	}
	rep, err := h(ctx, req)
	rep.Node = node
	if err != nil {
		rep.SDP = ""
		rep.Error = AsError(err)
		rep.After = nil
	}
	c.respond(m, rep)
	if rep.After != nil {
		rep.After()
	}
}

// respond sends rep (a Reply or a DistributeReply) to the requester of m,
// if it waits for one.
func (c *Client) respond(m *nats.Msg, rep any) {
	if m.Reply == "" {
		return
	}
	b, err := json.Marshal(rep)
	if err != nil {
		c.log.Error("bus: encode reply", "err", err)
		return
	}
	if err := m.Respond(b); err != nil {
		c.log.Debug("bus: respond", "err", err)
	}
}

// SplitURLs splits a --nats flag value ("nats://a:4222,nats://b:4222") into
// URLs, dropping empty items.
func SplitURLs(s string) []string {
	var out []string
	for _, u := range strings.Split(s, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	return out
}
