package bus

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"time"
)

// Relay nodes (traverse relay, docs/relay.md) on the bus: a node announces
// itself on traverse.relay.<node>.announce every RelayAnnounceInterval;
// signal, when it grants a session on a node, tells it on
// traverse.relay.<node>.open the public addresses of the session's peers,
// so that a node behind an address-dependent filter sends to them first.
const (
	subjectRelayPrefix   = "traverse.relay."
	subjectRelayAnnounce = ".announce"
	subjectRelayOpen     = ".open"

	// RelayAnnounceInterval is how often a relay node reports; signal
	// stops offering a node silent for relaychoice.DefaultSilence (5 s).
	RelayAnnounceInterval = time.Second
	// MaxRelayOpenPeers bounds RelayOpen.Peers.
	MaxRelayOpenPeers = 8
)

// RelayAnnounceSubject is where relay node publishes RelayAnnounce; "*"
// subscribes to every node.
func RelayAnnounceSubject(node string) string {
	return subjectRelayPrefix + node + subjectRelayAnnounce
}

// RelayOpenSubject is where relay node takes RelayOpen.
func RelayOpenSubject(node string) string { return subjectRelayPrefix + node + subjectRelayOpen }

// relayPermissions: relay node N publishes only its own announcements and
// reads only its own open messages.
func relayPermissions(node string) ([]string, []string) {
	return []string{RelayAnnounceSubject(node)}, []string{RelayOpenSubject(node)}
}

// RelayAnnounce is a relay node's report: who it is, where peers reach it,
// its NAT's behaviour as the node measured it (client/nat) and its load.
type RelayAnnounce struct {
	Node   string `json:"node"`
	Region string `json:"region,omitempty"`
	// Addr is the node's public UDP address ("ip:port").
	Addr string `json:"addr"`
	// NAT is true when a NAT translates the node's address; Mapping and
	// Filtering are RFC 4787 behaviours: "endpoint-independent",
	// "address-dependent", "address-and-port-dependent" or "unknown".
	NAT        bool   `json:"nat"`
	UDPBlocked bool   `json:"udp_blocked,omitempty"`
	Mapping    string `json:"mapping"`
	Filtering  string `json:"filtering"`
	// Volunteer marks a node on a user's machine.
	Volunteer bool `json:"volunteer,omitempty"`
	// Sessions and MaxSessions (0: no cap); Bitrate and MaxBitrate in
	// bits per second (0: no cap).
	Sessions    int       `json:"sessions"`
	MaxSessions int       `json:"max_sessions"`
	Bitrate     int64     `json:"bitrate"`
	MaxBitrate  int64     `json:"max_bitrate"`
	Time        time.Time `json:"time"`
}

var behaviours = map[string]bool{"unknown": true, "endpoint-independent": true, "address-dependent": true, "address-and-port-dependent": true}

// Validate checks a relay announcement.
func (a *RelayAnnounce) Validate() error {
	if !ValidName(a.Node) {
		return fmt.Errorf("%w: relay %q: %w", ErrBadMessage, a.Node, ErrBadSubjectToken)
	}
	if len(a.Region) > 64 {
		return fmt.Errorf("%w: relay %s: region longer than 64 bytes", ErrBadMessage, a.Node)
	}
	if ap, err := netip.ParseAddrPort(a.Addr); err != nil || ap.Port() == 0 || !ap.Addr().IsValid() {
		return fmt.Errorf("%w: relay %s: address %q", ErrBadMessage, a.Node, a.Addr)
	}
	if !behaviours[a.Mapping] || !behaviours[a.Filtering] {
		return fmt.Errorf("%w: relay %s: behaviour %q/%q", ErrBadMessage, a.Node, a.Mapping, a.Filtering)
	}
	if a.Sessions < 0 || a.MaxSessions < 0 || a.Bitrate < 0 || a.MaxBitrate < 0 {
		return fmt.Errorf("%w: relay %s: negative load", ErrBadMessage, a.Node)
	}
	return nil
}

// RelayOpen tells a node a session is granted and where its peers are.
type RelayOpen struct {
	Node string `json:"node"`
	// Session is the grant's session id, 32 hex digits.
	Session string `json:"session"`
	// Peers are the peers' public addresses ("ip:port"), at most
	// MaxRelayOpenPeers.
	Peers   []string  `json:"peers"`
	Expires time.Time `json:"expires"`
}

// Validate checks an open message.
func (o *RelayOpen) Validate() error {
	if !ValidName(o.Node) {
		return fmt.Errorf("%w: relay %q: %w", ErrBadMessage, o.Node, ErrBadSubjectToken)
	}
	if b, err := hex.DecodeString(o.Session); err != nil || len(b) != 16 {
		return fmt.Errorf("%w: relay open: session %q", ErrBadMessage, o.Session)
	}
	if len(o.Peers) > MaxRelayOpenPeers {
		return fmt.Errorf("%w: relay open: %d peers", ErrBadMessage, len(o.Peers))
	}
	for _, p := range o.Peers {
		if ap, err := netip.ParseAddrPort(p); err != nil || ap.Port() == 0 {
			return fmt.Errorf("%w: relay open: peer %q", ErrBadMessage, p)
		}
	}
	return nil
}

// AnnounceRelay publishes a relay node's report on its subject.
func (c *Client) AnnounceRelay(a RelayAnnounce) error {
	return c.publish(RelayAnnounceSubject(a.Node), &a)
}

// SubscribeRelays calls fn with every relay node's report; one naming
// another node than its subject's is dropped and counted.
func (c *Client) SubscribeRelays(fn func(RelayAnnounce)) (*Subscription, error) {
	return subscribe[RelayAnnounce](c, RelayAnnounceSubject("*"),
		ownSubject("relay announcement", func(a *RelayAnnounce) string { return RelayAnnounceSubject(a.Node) }), fn)
}

// OpenRelay sends o to its node.
func (c *Client) OpenRelay(o RelayOpen) error {
	return c.publish(RelayOpenSubject(o.Node), &o)
}

// SubscribeRelayOpen calls fn with node's open messages.
func (c *Client) SubscribeRelayOpen(node string, fn func(RelayOpen)) (*Subscription, error) {
	if !ValidName(node) {
		return nil, fmt.Errorf("%w: relay %q", ErrBadSubjectToken, node)
	}
	return subscribe[RelayOpen](c, RelayOpenSubject(node),
		ownSubject("relay open", func(o *RelayOpen) string { return RelayOpenSubject(o.Node) }), fn)
}
