package signal

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/client/nat"
	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/persource"
	"github.com/traverse-rtc/traverse/internal/relaychoice"
	"github.com/traverse-rtc/traverse/internal/relayproto"
	"github.com/traverse-rtc/traverse/internal/signal/p2pwire"
)

// RelayService answers a peer pair's request for relay nodes (the path
// sequence's second step; docs/relay.md): POST /relay/nodes with the requester's token in
// "Authorization: Bearer", a RelayRequest body, and a RelayOffer back: the
// nodes compatible with both peers' NATs, nearest first
// (internal/relaychoice), each with one signed grant per side of a fresh
// session. The requester passes the other side's grants to its peer
// through the end-to-end authenticated p2p channel. Each offered node is
// told the peers' public addresses (bus.RelayOpen) so that a node behind an
// address-dependent filter sends to them first.
type RelayService struct {
	cfg RelayConfig
	m   relayMetrics

	mu    sync.Mutex // guards nodes
	nodes map[string]relaychoice.Node
	rate  *persource.Rate
}

// RelayConfig configures a RelayService.
type RelayConfig struct {
	// Bus is where relay nodes announce themselves. Required.
	Bus *bus.Client
	// TokenKey checks the requester's token (signal's token key).
	TokenKey []byte
	// GrantKey signs grants; nodes hold its public half. Required.
	GrantKey ed25519.PrivateKey
	// GrantTTL is how long a grant may be used to bind (default 60 s;
	// a bound session lives on while it is used).
	GrantTTL time.Duration
	// MaxNodes is how many nodes an offer holds at most (default 4).
	MaxNodes int
	// Rate and Burst bound requests per source IPv4 address or IPv6 /64
	// (defaults 5/s and 10); over it: 429, counted.
	Rate  float64
	Burst int
	// Silence is how long a node may be silent and still be offered
	// (default relaychoice.DefaultSilence, 5 s).
	Silence    time.Duration
	Log        *slog.Logger
	Registerer prometheus.Registerer
	Now        func() time.Time
}

// RelayNAT is a peer's NAT as client/nat found it (the p2p "nat" message).
type RelayNAT = p2pwire.RelayNAT

// RelayPeer is one side of the pair.
type RelayPeer struct {
	NAT    RelayNAT `json:"nat"`
	Region string   `json:"region,omitempty"`
	// Addrs are the peer's public (server-reflexive) addresses, "ip:port".
	Addrs []string `json:"addrs,omitempty"`
	// RTT are the peer's measured round-trip times to nodes, ms by id.
	RTT map[string]float64 `json:"rtt_ms,omitempty"`
}

// RelayRequest is the body of POST /relay/nodes. Self is the requester
// (side 0 of every grant), Peer the other peer (side 1), named by its
// token identity.
type RelayRequest struct {
	Peer  string    `json:"peer"`
	Self  RelayPeer `json:"self"`
	Other RelayPeer `json:"other"`
}

// RelayOffer is the answer.
type RelayOffer struct {
	Session string           `json:"session"`
	Expires time.Time        `json:"expires"`
	Nodes   []RelayOfferNode `json:"nodes"`
}

// RelayOfferNode is one node to try, with the grants of both sides
// (base64url, no padding): Grants[0] the requester's, Grants[1] the peer's.
type RelayOfferNode = p2pwire.RelayOfferNode

// ErrRelayRequest is a relay node request that does not parse or breaks a
// limit.
var ErrRelayRequest = errors.New("signal: bad relay request")

const (
	maxRelayBody  = 8 << 10
	maxRelayAddrs = 4
	maxRelayRTTs  = 64
)

// ParseRelayRequest decodes and checks a request body.
func ParseRelayRequest(b []byte) (RelayRequest, error) {
	var r RelayRequest
	if len(b) > maxRelayBody {
		return r, fmt.Errorf("%w: body over %d bytes", ErrRelayRequest, maxRelayBody)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("%w: %w", ErrRelayRequest, err)
	}
	if !validIdentity(r.Peer) {
		return r, fmt.Errorf("%w: peer %q", ErrRelayRequest, r.Peer)
	}
	for _, p := range []*RelayPeer{&r.Self, &r.Other} {
		if len(p.Region) > 64 || len(p.Addrs) > maxRelayAddrs || len(p.RTT) > maxRelayRTTs {
			return r, fmt.Errorf("%w: peer description over its limits", ErrRelayRequest)
		}
		for _, a := range p.Addrs {
			if ap, err := netip.ParseAddrPort(a); err != nil || ap.Port() == 0 {
				return r, fmt.Errorf("%w: address %q", ErrRelayRequest, a)
			}
		}
		for id, ms := range p.RTT {
			if !bus.ValidName(id) || ms < 0 || ms > 60_000 {
				return r, fmt.Errorf("%w: rtt of %q", ErrRelayRequest, id)
			}
		}
	}
	return r, nil
}

type relayMetrics struct {
	requests *prometheus.CounterVec
	offered  prometheus.Counter
	bad      prometheus.Counter
}

// NewRelayService subscribes to the relay nodes' announcements.
func NewRelayService(cfg RelayConfig) (*RelayService, error) {
	if cfg.Bus == nil || len(cfg.GrantKey) != ed25519.PrivateKeySize || len(cfg.TokenKey) == 0 {
		return nil, fmt.Errorf("%w: relay service needs the bus, a token key and a grant key", ErrConfig)
	}
	config := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	config(&cfg.GrantTTL, time.Minute)
	config(&cfg.Silence, relaychoice.DefaultSilence)
	if cfg.MaxNodes <= 0 {
		cfg.MaxNodes = 4
	}
	if cfg.Rate <= 0 {
		cfg.Rate, cfg.Burst = 5, 10
	}
	if cfg.Burst <= 0 {
		cfg.Burst = int(2 * cfg.Rate)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	rs := &RelayService{cfg: cfg, nodes: map[string]relaychoice.Node{}, rate: persource.NewRate(cfg.Rate, cfg.Burst)}
	rs.m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "traverse_signal_relay_requests_total",
		Help: "Relay node requests, by result (offered, none, bad, token, rate_limited)."}, []string{"result"})
	rs.m.offered = prometheus.NewCounter(prometheus.CounterOpts{Name: "traverse_signal_relay_nodes_offered_total",
		Help: "Relay nodes offered, summed over requests."})
	rs.m.bad = prometheus.NewCounter(prometheus.CounterOpts{Name: "traverse_signal_relay_announcements_bad_total",
		Help: "Relay node announcements dropped: unparsable address or behaviour."})
	for _, c := range []prometheus.Collector{rs.m.requests, rs.m.offered, rs.m.bad} {
		if err := cfg.Registerer.Register(c); err != nil {
			return nil, err
		}
	}
	if _, err := cfg.Bus.SubscribeRelays(rs.update); err != nil {
		return nil, err
	}
	return rs, nil
}

func (rs *RelayService) update(a bus.RelayAnnounce) {
	addr, err := netip.ParseAddrPort(a.Addr)
	var mp, fl nat.Behavior
	if err == nil {
		err = errors.Join(mp.UnmarshalText([]byte(a.Mapping)), fl.UnmarshalText([]byte(a.Filtering)))
	}
	if err != nil {
		rs.m.bad.Inc()
		return
	}
	n := relaychoice.Node{ID: a.Node, Region: a.Region, Addr: addr,
		NAT:      relaychoice.NAT{Behind: a.NAT, UDPBlocked: a.UDPBlocked, Mapping: mp, Filtering: fl},
		Sessions: a.Sessions, MaxSessions: a.MaxSessions, Bitrate: a.Bitrate, MaxBitrate: a.MaxBitrate,
		Seen: rs.cfg.Now()}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	// Forget the silent ones here so the table stays bounded by the live set.
	for id, old := range rs.nodes {
		if n.Seen.Sub(old.Seen) > 10*rs.cfg.Silence {
			delete(rs.nodes, id)
		}
	}
	rs.nodes[a.Node] = n
}

// Offer computes the offer for r (the HTTP handler's
// core, exported for callers that speak another transport).
func (rs *RelayService) Offer(r RelayRequest) (RelayOffer, error) {
	now := rs.cfg.Now()
	rs.mu.Lock()
	all := make([]relaychoice.Node, 0, len(rs.nodes))
	for _, n := range rs.nodes {
		all = append(all, n)
	}
	rs.mu.Unlock()
	peer := func(p RelayPeer) relaychoice.Peer {
		rtt := make(map[string]time.Duration, len(p.RTT))
		for id, ms := range p.RTT {
			rtt[id] = time.Duration(ms * float64(time.Millisecond))
		}
		return relaychoice.Peer{Region: p.Region, RTT: rtt, NAT: relaychoice.NAT{Behind: p.NAT.NAT,
			UDPBlocked: p.NAT.UDPBlocked, Mapping: p.NAT.Mapping, Filtering: p.NAT.Filtering}}
	}
	chosen := relaychoice.Choose(all, peer(r.Self), peer(r.Other), now, rs.cfg.Silence, rs.cfg.MaxNodes)
	var sess relayproto.Session
	_, _ = rand.Read(sess[:])
	exp := now.Add(rs.cfg.GrantTTL)
	offer := RelayOffer{Session: hex.EncodeToString(sess[:]), Expires: exp.UTC().Truncate(time.Second)}
	peers := append(append([]string(nil), r.Self.Addrs...), r.Other.Addrs...)
	for _, n := range chosen {
		o := RelayOfferNode{ID: n.ID, Region: n.Region, Addr: n.Addr.String()}
		for side := range uint8(2) {
			g, err := relayproto.AppendGrant(nil, relayproto.Grant{Session: sess, Side: side, Node: n.ID, Expires: exp}, rs.cfg.GrantKey)
			if err != nil {
				return RelayOffer{}, err
			}
			o.Grants[side] = base64.RawURLEncoding.EncodeToString(g)
		}
		if err := rs.cfg.Bus.OpenRelay(bus.RelayOpen{Node: n.ID, Session: offer.Session, Peers: peers, Expires: exp}); err != nil {
			rs.cfg.Log.Warn("relay: open", "node", n.ID, "err", err)
		}
		offer.Nodes = append(offer.Nodes, o)
	}
	return offer, nil
}

// ServeHTTP serves POST /relay/nodes.
func (rs *RelayService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	src, _ := netip.ParseAddrPort(r.RemoteAddr)
	if !rs.rate.Allow(src.Addr().Unmap()) {
		rs.m.requests.WithLabelValues("rate_limited").Inc()
		http.Error(w, "rate limited", http.StatusTooManyRequests)
		return
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	claims, err := ParseToken(rs.cfg.TokenKey, tok, rs.cfg.Now())
	if !ok || err != nil || !claims.Publish {
		rs.m.requests.WithLabelValues("token").Inc()
		http.Error(w, "token refused", http.StatusUnauthorized)
		return
	}
	body := http.MaxBytesReader(w, r.Body, maxRelayBody)
	b, err := io.ReadAll(body)
	if err != nil {
		rs.m.requests.WithLabelValues("bad").Inc()
		http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
		return
	}
	req, err := ParseRelayRequest(b)
	if err != nil || req.Peer == claims.Identity {
		rs.m.requests.WithLabelValues("bad").Inc()
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	offer, err := rs.Offer(req)
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	if len(offer.Nodes) == 0 {
		rs.m.requests.WithLabelValues("none").Inc()
	} else {
		rs.m.requests.WithLabelValues("offered").Inc()
		rs.m.offered.Add(float64(len(offer.Nodes)))
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(offer)
}
