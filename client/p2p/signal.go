package p2p

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"sync"
)

// Signaler carries messages between the two peers: the rendezvous that
// introduces them (the signaling service, see DialSignal and AcceptSignal,
// or Pipe in one process). Messages are small JSON objects; a Signaler
// delivers them reliably and in order, or fails.
type Signaler interface {
	// Send delivers msg to the peer.
	Send(ctx context.Context, msg []byte) error
	// Recv returns the peer's next message.
	Recv(ctx context.Context) ([]byte, error)
	// Names returns the local and the peer's names as the signaling
	// service vouches for them, and whether this side called (the
	// initiator of the handshake).
	Names() (local, peer string, initiator bool)
}

// Signaling messages between peers (JSON):
//
//	{"t":"hs","hs":"<base64 Noise message>"}
//	{"t":"cand","c":[{"a":"203.0.113.7:4100","k":"srflx"},{"a":"...","k":"relay","tr":"tcp"}]}
//	{"t":"nat","nat":{"mapping":"endpoint-independent","filtering":"address-dependent"}}
//	{"t":"relay","rn":{"n":[{"id":"node-1","a":"198.51.100.4:3490","g":"<base64 grant>"}]}}
//	{"t":"bye"}
//
// Candidates may come in several cand messages (host ones at once, the
// server-reflexive one after STUN, a relayed one after a TURN allocation).
type message struct {
	Type       string      `json:"t"`
	Handshake  []byte      `json:"hs,omitempty"`
	Candidates []Candidate `json:"c,omitempty"`
	NAT        *NATInfo    `json:"nat,omitempty"`
	Relay      *relayMsg   `json:"rn,omitempty"`
}

// Candidate is an address where a peer may be reached.
type Candidate struct {
	Addr netip.AddrPort `json:"a"`
	// Kind is "host" (a local interface address), "srflx" (the public
	// address a STUN server saw), "mapped" (a port mapping the home router
	// granted, client/portmap), "prflx" (learnt from a probe's source,
	// never sent), "predicted" (port prediction, never sent), "relay" (a
	// TURN allocation) or "relay-node" (the relay node both peers bound).
	Kind string `json:"k"`
	// Transport is how a relay candidate reaches its TURN server: "udp",
	// "tcp" or "tls".
	Transport string `json:"tr,omitempty"`
	// Seq, on a srflx candidate, says the NAT maps each new destination to
	// the next port, Seq apart (a sequential symmetric NAT): the peer then
	// also probes the ports that follow (port prediction).
	Seq uint16 `json:"seq,omitempty"`
}

// NATInfo is a peer's NAT behaviour as client/nat found it.
type NATInfo struct {
	Mapping   string `json:"mapping"`
	Filtering string `json:"filtering"`
	// UDPBlocked is set when no STUN server answered over UDP.
	UDPBlocked bool `json:"udp_blocked,omitempty"`
	// Behind is set when a NAT translates (client/nat's Report.NAT).
	Behind bool `json:"behind,omitempty"`
}

// Limits of one signaling message.
const (
	maxMessage       = 8 << 10
	maxCandidates    = 16 // per message
	maxRemoteCands   = 80 // in total, predicted ones included
	maxHandshake     = 512
	maxNATFieldBytes = 64
	maxSeqStep       = 16
	// predictPorts is how many ports after a sequential NAT's srflx one
	// are probed: the flows the peer opens between its STUN request and
	// its probe to us (to our other candidates, NAT discovery) each take
	// one.
	predictPorts = 32
)

// decodeMessage parses and validates a peer's signaling message.
func decodeMessage(b []byte) (message, error) {
	var m message
	if len(b) > maxMessage {
		return m, fmt.Errorf("%w: %d bytes", ErrSignal, len(b))
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%w: %v", ErrSignal, err)
	}
	switch m.Type {
	case "hs":
		if len(m.Handshake) == 0 || len(m.Handshake) > maxHandshake {
			return m, fmt.Errorf("%w: handshake of %d bytes", ErrSignal, len(m.Handshake))
		}
	case "cand":
		if len(m.Candidates) == 0 || len(m.Candidates) > maxCandidates {
			return m, fmt.Errorf("%w: %d candidates", ErrSignal, len(m.Candidates))
		}
		for _, c := range m.Candidates {
			if err := c.validate(); err != nil {
				return m, err
			}
		}
	case "nat":
		if m.NAT == nil || len(m.NAT.Mapping) > maxNATFieldBytes || len(m.NAT.Filtering) > maxNATFieldBytes {
			return m, fmt.Errorf("%w: bad nat", ErrSignal)
		}
	case "relay":
		if err := m.Relay.validate(); err != nil {
			return m, err
		}
	case "bye":
	default:
		return m, fmt.Errorf("%w: unknown type %.16q", ErrSignal, m.Type)
	}
	return m, nil
}

func (c Candidate) validate() error {
	a := c.Addr.Addr()
	if !c.Addr.IsValid() || c.Addr.Port() == 0 || a.IsUnspecified() || a.IsMulticast() {
		return fmt.Errorf("%w: candidate address %s", ErrSignal, c.Addr)
	}
	switch c.Kind {
	case "host", "srflx":
		if c.Transport != "" {
			return fmt.Errorf("%w: transport on a %s candidate", ErrSignal, c.Kind)
		}
		if c.Seq != 0 && (c.Kind != "srflx" || c.Seq > maxSeqStep) {
			return fmt.Errorf("%w: port step %d on a %s candidate", ErrSignal, c.Seq, c.Kind)
		}
	case "mapped", "relay-node":
		if c.Transport != "" || c.Seq != 0 {
			return fmt.Errorf("%w: transport or port step on a %s candidate", ErrSignal, c.Kind)
		}
	case "relay":
		if c.Seq != 0 {
			return fmt.Errorf("%w: port step on a relay candidate", ErrSignal)
		}
		if c.Transport != "udp" && c.Transport != "tcp" && c.Transport != "tls" {
			return fmt.Errorf("%w: relay transport %.8q", ErrSignal, c.Transport)
		}
	default:
		return fmt.Errorf("%w: candidate kind %.8q", ErrSignal, c.Kind)
	}
	return nil
}

func encodeMessage(m message) []byte {
	b, _ := json.Marshal(m) // only our own types: cannot fail
	return b
}

// Pipe returns the two ends of an in-process Signaler: a calls b. For
// tests and examples; a real application uses the signaling service.
func Pipe(a, b string) (Signaler, Signaler) {
	ab := &pipeQueue{ch: make(chan struct{}, 1)}
	ba := &pipeQueue{ch: make(chan struct{}, 1)}
	return &pipeEnd{local: a, peer: b, initiator: true, out: ab, in: ba},
		&pipeEnd{local: b, peer: a, out: ba, in: ab}
}

type pipeQueue struct {
	mu   sync.Mutex // guards msgs
	msgs [][]byte
	ch   chan struct{} // signalled when msgs grows
}

type pipeEnd struct {
	local, peer string
	initiator   bool
	out, in     *pipeQueue
}

func (p *pipeEnd) Names() (string, string, bool) { return p.local, p.peer, p.initiator }

func (p *pipeEnd) Send(ctx context.Context, msg []byte) error {
	p.out.mu.Lock()
	p.out.msgs = append(p.out.msgs, append([]byte(nil), msg...))
	p.out.mu.Unlock()
	select {
	case p.out.ch <- struct{}{}:
	default:
	}
	return nil
}

func (p *pipeEnd) Recv(ctx context.Context) ([]byte, error) {
	for {
		p.in.mu.Lock()
		if len(p.in.msgs) > 0 {
			m := p.in.msgs[0]
			p.in.msgs = p.in.msgs[1:]
			p.in.mu.Unlock()
			return m, nil
		}
		p.in.mu.Unlock()
		select {
		case <-p.in.ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
