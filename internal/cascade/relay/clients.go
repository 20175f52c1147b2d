package relay

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
	"github.com/traverse-rtc/traverse/internal/persource"
)

// Relay clients (docs/relay-protocol.md, "Clients"): a program that is not
// a node publishes tracks into a room through the relay port, with a token
// signed by the signal role's key. The endpoint verifies the token
// (Config.ClientAuth), keys the client's link from it, binds the client to
// the address its hello came from, and hands its media to the SFU
// (ClientLocal) as it hands a remote node's.

// ClientGrant is what a verified token grants.
type ClientGrant struct {
	Room, Identity     string
	Publish, Subscribe bool
	Expires            time.Time
}

// ClientAuth verifies a token at now and returns what it grants and the
// client's link secret (relaywire.ClientSecret). It is the signal role's
// token check (the node knows the token key); any error refuses the hello.
type ClientAuth func(token []byte, now time.Time) (ClientGrant, []byte, error)

// ClientID names one client session of an endpoint.
type ClientID uint64

// ClientLocal is what the SFU implements to take relay clients; Local
// must implement it when Config.ClientAuth is set.
type ClientLocal interface {
	// ClientJoin puts the client's tracks in its room; an error refuses
	// the hello. Media then arrives through Local.DeliverMedia with the
	// grant's room and identity as room and publisher.
	ClientJoin(id ClientID, g ClientGrant, tracks []relaywire.ClientTrack) error
	// ClientLeave takes them out again (the client went quiet, its token
	// expired, or it said hello with other tracks).
	ClientLeave(id ClientID, g ClientGrant, tracks []relaywire.ClientTrack)
}

// ClientSubscriber is what the SFU implements to serve relay clients that
// receive (the hello's subscribe flag, docs/relay-protocol.md, "Receiving");
// without it such a client is welcomed and sent nothing.
type ClientSubscriber interface {
	// ClientSubscribe starts the client's reception of its room's tracks,
	// or refreshes it (it is called at every hello of a subscribing
	// client): the SFU announces each track (SendClientTrack), all of them
	// again on a refresh, then sends its media (SendClientMedia). It is
	// called without the endpoint's locks held.
	ClientSubscribe(id ClientID, g ClientGrant)
	// ClientUnsubscribe stops it (the client went quiet, its token
	// expired, or it said hello without the flag). It must not call the
	// endpoint: the clients' lock is held.
	ClientUnsubscribe(id ClientID, g ClientGrant)
	// ClientFeedback is a subscribing client's RTCP (a keyframe request)
	// for a track it receives: its index and layer.
	ClientFeedback(id ClientID, track, layer uint8, rtcp []byte)
}

// ClientLayerChooser is what the SFU implements to take a receiving
// client's layer choices (docs/relay-protocol.md, "Layers"); without it
// a choice is refused (client_track).
type ClientLayerChooser interface {
	// ClientLayer sets which layer of the track of index track the
	// client gets: 0..2, relaywire.LayerAll or relaywire.LayerNone.
	// ErrNoTrack: no track of that index, or a layer it does not have.
	ClientLayer(id ClientID, track, layer uint8) error
}

// Client defaults.
const (
	// DefaultLayerRate and LayerBurst bound the layer choices one source
	// address makes (each may ask a publisher for a keyframe): a burst
	// that sets every track a client may receive, then a few a second.
	DefaultLayerRate  = 20
	LayerBurst        = relaywire.MaxSubTracks
	DefaultMaxClients = 64
	DefaultClientRate = 5000 // frames per second per source address
	DefaultHelloRate  = 5    // hellos per second per source address
	DefaultClientIdle = 30 * time.Second
)

type clientSession struct {
	id     ClientID
	key    string // room "\x00" identity
	token  string
	link   *relaywire.ClientLink
	grant  ClientGrant
	room   []byte
	ident  []byte
	tracks []relaywire.ClientTrack
	names  [][]byte
	// sub: the SFU serves the client its room's tracks (ClientSubscribe);
	// guarded by clients.mu.
	sub bool
	// addr is where the client speaks from (zero once it went quiet);
	// guarded by clients.mu.
	addr     netip.AddrPort
	lastSeen atomic.Int64 // unix nanoseconds
}

type clients struct {
	auth      ClientAuth
	local     ClientLocal
	subs      ClientSubscriber // nil: the SFU serves no subscribers
	max       int
	idle      time.Duration
	rate      *persource.Rate
	helloRate *persource.Rate
	layerRate *persource.Rate
	layers    ClientLayerChooser // nil: layer choices are refused
	nextID    atomic.Uint64

	mu     sync.RWMutex
	byKey  map[string]*clientSession // every session whose token has not expired
	byAddr map[netip.AddrPort]*clientSession
	byID   map[ClientID]*clientSession
}

func (e *Endpoint) openClients() error {
	c := &e.cfg
	if c.ClientAuth == nil {
		return nil
	}
	cl, ok := c.Local.(ClientLocal)
	if !ok {
		return fmt.Errorf("%w: ClientAuth set but Local does not implement ClientLocal", ErrConfig)
	}
	if c.MaxClients <= 0 {
		c.MaxClients = DefaultMaxClients
	}
	if c.ClientRate == 0 {
		c.ClientRate = DefaultClientRate
	}
	if c.HelloRate == 0 {
		c.HelloRate = DefaultHelloRate
	}
	if c.ClientIdle <= 0 {
		c.ClientIdle = DefaultClientIdle
	}
	e.cl = &clients{auth: c.ClientAuth, local: cl, max: c.MaxClients, idle: c.ClientIdle,
		rate: persource.NewRate(c.ClientRate, max(int(c.ClientRate/10), 1)), helloRate: persource.NewRate(c.HelloRate, max(int(c.HelloRate), 1)),
		byKey: map[string]*clientSession{}, byAddr: map[netip.AddrPort]*clientSession{}, byID: map[ClientID]*clientSession{}}
	e.cl.subs, _ = c.Local.(ClientSubscriber)
	e.cl.layers, _ = c.Local.(ClientLayerChooser)
	e.cl.layerRate = persource.NewRate(DefaultLayerRate, LayerBurst)
	return nil
}

// handleClient is a client frame's path (types 6-8).
func (e *Endpoint) handleClient(b []byte, from netip.AddrPort, t relaywire.Type, s *scratch) {
	cl := e.cl
	if cl == nil {
		e.m.drops[dropUnknownPeer].Inc()
		return
	}
	if !cl.rate.Allow(from.Addr()) {
		e.m.drops[dropClientRate].Inc()
		return
	}
	switch t {
	case relaywire.TypeHello:
		if !cl.helloRate.Allow(from.Addr()) {
			e.m.drops[dropClientRate].Inc()
			return
		}
		e.hello(b, from, s)
	case relaywire.TypeClient:
		cl.mu.RLock()
		cs := cl.byAddr[from]
		cl.mu.RUnlock()
		if cs == nil {
			e.m.drops[dropClientUnknown].Inc()
			return
		}
		_, body, err := cs.link.Open(b)
		if err != nil {
			e.countOpenErr(err)
			return
		}
		m, payload, err := relaywire.ParseClientMsg(body)
		if err == nil && m.Kind == relaywire.KindFeedback {
			e.clientFeedback(cs, m, payload)
			return
		}
		if err == nil && m.Kind == relaywire.KindLayer {
			e.clientLayer(cs, body, from)
			return
		}
		if err != nil || m.Kind != relaywire.KindMedia || int(m.Track) >= len(cs.names) {
			e.m.drops[dropMalformed].Inc()
			return
		}
		cs.lastSeen.Store(time.Now().UnixNano())
		e.m.clientMedia.Inc()
		e.media.Add(1)
		e.cfg.Local.DeliverMedia(cs.room, cs.ident, cs.names[m.Track], m.Layer, payload)
	default: // a welcome is the node's to send
		e.m.drops[dropMalformed].Inc()
	}
}

// clientFeedback hands a subscribing client's RTCP for a track it
// receives to the SFU; from a client that does not receive, it is
// refused (client_rights).
func (e *Endpoint) clientFeedback(cs *clientSession, m relaywire.ClientMsg, rtcp []byte) {
	cl := e.cl
	cl.mu.RLock()
	sub := cs.sub
	cl.mu.RUnlock()
	if !sub {
		e.m.drops[dropClientRights].Inc()
		return
	}
	cs.lastSeen.Store(time.Now().UnixNano())
	cl.subs.ClientFeedback(cs.id, m.Track, m.Layer, rtcp)
}

// clientLayer hands a receiving client's layer choice to the SFU: refused
// from a client that does not receive (client_rights), beyond the
// per-source layer rate (client_rate), for a track it was not given or a
// layer that track lacks (client_track).
func (e *Endpoint) clientLayer(cs *clientSession, body []byte, from netip.AddrPort) {
	cl := e.cl
	track, layer, err := relaywire.ParseLayerMsg(body)
	if err != nil {
		e.m.drops[dropMalformed].Inc()
		return
	}
	cl.mu.RLock()
	sub := cs.sub
	cl.mu.RUnlock()
	switch {
	case !sub:
		e.m.drops[dropClientRights].Inc()
		return
	case !cl.layerRate.Allow(from.Addr()):
		e.m.drops[dropClientRate].Inc()
		return
	}
	cs.lastSeen.Store(time.Now().UnixNano())
	if cl.layers == nil || cl.layers.ClientLayer(cs.id, track, layer) != nil {
		e.m.drops[dropClientTrack].Inc()
	}
}

// countOpenErr counts a frame a link (a node's or a client's) refused, or
// whose link header does not parse.
func (e *Endpoint) countOpenErr(err error) {
	switch {
	case errors.Is(err, relaywire.ErrVersion):
		e.m.drops[dropVersion].Inc()
	case errors.Is(err, relaywire.ErrReplay):
		e.m.drops[dropReplay].Inc()
	case errors.Is(err, relaywire.ErrEpoch):
		e.m.drops[dropEpoch].Inc()
	case errors.Is(err, relaywire.ErrAuth):
		e.m.drops[dropAuth].Inc()
	default:
		e.m.drops[dropShort].Inc()
	}
}

// hello admits a client: token, key, rights, limits; then binds it to its
// address and puts its tracks in the room.
func (e *Endpoint) hello(b []byte, from netip.AddrPort, s *scratch) {
	cl := e.cl
	tok, err := relaywire.HelloToken(b)
	if err != nil {
		e.m.drops[dropClientToken].Inc()
		return
	}
	now := time.Now()
	g, secret, err := cl.auth(tok, now)
	if err != nil {
		e.m.drops[dropClientToken].Inc()
		return
	}
	key := g.Room + "\x00" + g.Identity
	// A subscribing client's tracks are announced once the lock is
	// released (deferred before the unlock: it runs after it).
	var subscribe *clientSession
	defer func() {
		if subscribe != nil {
			e.subscribe(subscribe)
		}
	}()
	cl.mu.Lock()
	defer cl.mu.Unlock()
	cs := cl.byKey[key]
	if cs == nil || cs.token != string(tok) {
		// a new session, or the same client with a new token: the link
		// (and its replay window) belongs to the token
		if cs == nil && len(cl.byKey) >= 4*cl.max {
			e.m.drops[dropClientLimit].Inc()
			return
		}
		l, err := relaywire.NewClientLink(secret, true, e.cfg.Node)
		if err != nil {
			e.m.drops[dropClientToken].Inc()
			return
		}
		cs = &clientSession{key: key, token: string(tok), link: l, grant: g, room: []byte(g.Room), ident: []byte(g.Identity)}
		if old := cl.byKey[key]; old != nil {
			cs.id, cs.addr, cs.tracks, cs.names = old.id, old.addr, old.tracks, old.names
		}
	}
	h, body, err := cs.link.Open(b)
	if err != nil {
		e.countOpenErr(err)
		return
	}
	hl, err := relaywire.ParseHello(body)
	switch {
	case err != nil:
		e.m.drops[dropMalformed].Inc()
		return
	case hl.Room != g.Room:
		e.m.drops[dropClientRoom].Inc()
		return
	case (hl.Publish || len(hl.Tracks) > 0) && !g.Publish, hl.Subscribe && !g.Subscribe, len(hl.Tracks) > 0 && !hl.Publish:
		e.m.drops[dropClientRights].Inc()
		return
	}
	if !cs.addr.IsValid() && cl.active() >= cl.max {
		e.m.drops[dropClientLimit].Inc()
		return
	}
	if cs.id != 0 && !sameTracks(cs.tracks, hl.Tracks) && len(cs.tracks) > 0 {
		cl.local.ClientLeave(cs.id, cs.grant, cs.tracks)
		cs.tracks, cs.names = nil, nil
	}
	if cs.id == 0 {
		cs.id = ClientID(cl.nextID.Add(1))
	}
	if len(cs.tracks) == 0 && len(hl.Tracks) > 0 {
		if err := cl.local.ClientJoin(cs.id, g, hl.Tracks); err != nil {
			e.m.drops[dropClientRefused].Inc()
			return
		}
		cs.tracks = hl.Tracks
		cs.names = make([][]byte, len(hl.Tracks))
		for i := range hl.Tracks {
			cs.names[i] = []byte(hl.Tracks[i].ID)
		}
	}
	// the tag verified and the counter is fresh: the client speaks from
	// here now (a restart or a new address); the old address is unbound
	if cs.addr.IsValid() && cs.addr != from {
		delete(cl.byAddr, cs.addr)
	}
	if prev := cl.byAddr[from]; prev != nil && prev != cs {
		cl.quietLocked(prev)
	}
	cs.addr, cs.grant = from, g
	switch {
	case hl.Subscribe && cl.subs != nil:
		cs.sub, subscribe = true, cs
	case cs.sub:
		cs.sub = false
		cl.subs.ClientUnsubscribe(cs.id, cs.grant)
	}
	cs.lastSeen.Store(now.UnixNano())
	cl.byKey[key] = cs
	cl.byAddr[from] = cs
	cl.byID[cs.id] = cs
	e.m.clients.Set(float64(len(cl.byAddr)))
	body = relaywire.AppendWelcome(s.hdr[:0], relaywire.WelcomeOK, h.Counter)
	f := cs.link.Seal(s.frame[:0], relaywire.TypeWelcome, body)
	_ = e.conn.WriteTo(f, from)
}

// subscribe has the SFU serve a subscribing client (after its hello, the
// lock released); a session unbound in between is unsubscribed again.
func (e *Endpoint) subscribe(cs *clientSession) {
	cl := e.cl
	cl.mu.RLock()
	g := cs.grant
	cl.mu.RUnlock()
	cl.subs.ClientSubscribe(cs.id, g)
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if !cs.sub || !cs.addr.IsValid() {
		cl.subs.ClientUnsubscribe(cs.id, g)
	}
}

func sameTracks(a, b []relaywire.ClientTrack) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// active is the number of sessions bound to an address. mu is held.
func (cl *clients) active() int { return len(cl.byAddr) }

// quietLocked unbinds a session and takes its tracks out of the room; it
// keeps the link (the replay window) until the token expires, so that a
// captured hello cannot be replayed. mu is held.
func (cl *clients) quietLocked(cs *clientSession) {
	if cs.addr.IsValid() {
		delete(cl.byAddr, cs.addr)
		cs.addr = netip.AddrPort{}
	}
	if cs.sub {
		cs.sub = false
		cl.subs.ClientUnsubscribe(cs.id, cs.grant)
	}
	if len(cs.tracks) > 0 {
		cl.local.ClientLeave(cs.id, cs.grant, cs.tracks)
		cs.tracks, cs.names = nil, nil
	}
}

// tickClients unbinds clients quiet for longer than the idle time and
// forgets sessions whose token expired.
func (e *Endpoint) tickClients(now time.Time) {
	cl := e.cl
	if cl == nil {
		return
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	for k, cs := range cl.byKey {
		expired := !now.Before(cs.grant.Expires)
		if cs.addr.IsValid() && (expired || now.Sub(time.Unix(0, cs.lastSeen.Load())) > cl.idle) {
			cl.quietLocked(cs)
		}
		if expired {
			delete(cl.byKey, k)
			delete(cl.byID, cs.id)
		}
	}
	e.m.clients.Set(float64(len(cl.byAddr)))
}

// SendClientFeedback sends RTCP (a keyframe request) for a client's track
// to the client.
func (e *Endpoint) SendClientFeedback(id ClientID, track, layer uint8, rtcp []byte) error {
	return e.sendClient(id, relaywire.ClientMsg{Kind: relaywire.KindFeedback, Track: track, Layer: layer}, rtcp, false)
}

// SendClientMedia sends an RTP packet of a track a subscribing client
// receives (track: the index SendClientTrack gave it) to the client, at
// the address its hello bound and nowhere else. It does not allocate.
func (e *Endpoint) SendClientMedia(id ClientID, track, layer uint8, rtp []byte) error {
	return e.sendClient(id, relaywire.ClientMsg{Kind: relaywire.KindMedia, Track: track, Layer: layer}, rtp, true)
}

// SendClientTrack announces a track to a subscribing client under index
// track (t nil: the track of that index is gone).
func (e *Endpoint) SendClientTrack(id ClientID, track uint8, t *relaywire.SubTrack) error {
	if t == nil {
		return e.sendClient(id, relaywire.ClientMsg{Kind: relaywire.KindTrackGone, Track: track}, nil, true)
	}
	var b [2 + 2*relaywire.MaxName + 8 + relaywire.MaxMime + 1 + relaywire.MaxFmtp]byte
	body, err := relaywire.AppendSubTrack(b[:0], t)
	if err != nil {
		return err
	}
	return e.sendClient(id, relaywire.ClientMsg{Kind: relaywire.KindTrack, Track: track}, body, true)
}

// sendClient seals one client message to a bound client (sub: only to a
// subscribing one).
func (e *Endpoint) sendClient(id ClientID, m relaywire.ClientMsg, payload []byte, sub bool) error {
	if e.cl == nil {
		return ErrNoRoute
	}
	e.cl.mu.RLock()
	cs := e.cl.byID[id]
	var to netip.AddrPort
	if cs != nil && (cs.sub || !sub) {
		to = cs.addr
	}
	e.cl.mu.RUnlock()
	if !to.IsValid() {
		return ErrNoRoute
	}
	s := e.scratch.Get().(*scratch)
	defer e.scratch.Put(s)
	body := relaywire.AppendClientMsg(s.hdr[:0], m, payload)
	f := cs.link.Seal(s.frame[:0], relaywire.TypeClient, body)
	if sub {
		e.m.clientSent.Inc()
	}
	return e.conn.WriteTo(f, to)
}

// Clients returns the number of clients bound to an address.
func (e *Endpoint) Clients() int {
	if e.cl == nil {
		return 0
	}
	e.cl.mu.RLock()
	defer e.cl.mu.RUnlock()
	return len(e.cl.byAddr)
}
