package signal

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"time"

	"github.com/traverse-rtc/traverse/internal/bus"
)

// A session placed on a node of a balanced group (Node.Group; docs/cascade.md,
// "Behind a UDP load balancer") is offered to every live node of the group:
// the same join with ICE credentials chosen here, so that every node answers
// with them (and with the group's certificate, which every node derives
// alike). The client gets the placed node's answer. The balancer sends the
// client's packets to one of the nodes; that node claims the session
// (bus.SessionClaim) when its first binding request arrives. The first
// claim of a node the session was offered to wins: that node gets
// bus.RequestClaimed and holds the session from then on (its messages reach
// the client, the client's go to it); every other node gets bus.RequestLeave,
// and so does a later claimant. A claim from a node the session was not
// offered to is refused. Only a node may publish on its own subjects (bus
// permissions), so nobody claims in another node's name.

// groupMembers returns the live nodes of node's group, node first.
func (b *BusBackend) groupMembers(node Node) []string {
	out := []string{node.ID}
	for _, a := range b.table.Live(b.now()) {
		if a.Group == node.Group && a.Node != node.ID && !a.Draining {
			out = append(out, a.Node)
		}
	}
	return out
}

// RefusedClaims is how many group claims this server refused: a second
// claim of a session already won, or a claim by a node the session was not
// offered to.
func (b *BusBackend) RefusedClaims() uint64 { return b.refusedClaims.Load() }

// iceAlphabet is RFC 8839's ice-char (letters, digits, "+", "/").
const iceAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

// newICECredentials returns a random ufrag (16 ice-chars, 96 bits) and
// password (32, 192 bits).
func newICECredentials() *bus.ICECredentials {
	b := make([]byte, 48)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	for i := range b {
		b[i] = iceAlphabet[b[i]&63]
	}
	return &bus.ICECredentials{Ufrag: string(b[:16]), Pwd: string(b[16:])}
}

// offerGroup sends the session's join to every node of the group at once and
// returns the placed node's answer (or, when it failed, another's).
func (l *busLink) offerGroup(ctx context.Context, sdp, ufrag string) (string, error) {
	ice := newICECredentials()
	join := &bus.Join{Room: l.req.Room, Identity: l.req.Identity, Publish: l.req.Publish, Subscribe: l.req.Subscribe,
		Offer: sdp, ClientAddr: l.req.Client, ICE: ice}
	answers := make([]string, len(l.group))
	errs := make([]error, len(l.group))
	var wg sync.WaitGroup
	for i, n := range l.group {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep, err := l.b.c.Request(ctx, n, bus.Request{Type: bus.RequestJoin, Session: l.req.Session, Join: join})
			if err == nil && rep.SDP == "" {
				err = fmt.Errorf("%w: node %s answered no sdp", ErrNode, n)
			}
			answers[i], errs[i] = rep.SDP, err
		}()
	}
	wg.Wait()
	offered := map[string]bool{}
	answer := ""
	for i, n := range l.group {
		if errs[i] == nil {
			offered[n] = true
			if answer == "" {
				answer = answers[i]
			}
		}
	}
	if answer == "" {
		return "", fromBus(errs[0])
	}
	_ = l.b.c.AnnounceSession(bus.SessionAnnounce{Session: l.req.Session, Room: l.req.Room, Node: l.group[0],
		Ufrag: ice.Ufrag, Time: l.b.now()})
	l.mu.Lock()
	l.joined, l.ufrag, l.offered = true, ufrag, offered
	closed := l.closed
	l.mu.Unlock()
	if closed {
		// Closed while the joins were out: free the nodes.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		l.leaveAll(ctx, l.group)
		cancel()
	}
	return answer, nil
}

// claim decides node's claim of the session: the first claim of a node the
// session was offered to wins.
func (l *busLink) claim(node string) {
	l.mu.Lock()
	switch {
	case l.closed || !l.offered[node]:
		l.mu.Unlock()
		l.b.refusedClaims.Add(1)
		return
	case l.winner != "":
		again := l.winner == node
		l.mu.Unlock()
		if !again {
			// A second node saw the client's packets (another of its
			// addresses hashed elsewhere): it may not serve the session.
			l.b.refusedClaims.Add(1)
			go l.leaveAll(context.Background(), []string{node})
			return
		}
		go l.confirm(node) // the node claimed again: the verdict was lost
		return
	}
	l.winner, l.node = node, node
	others := l.unclaimedLocked()
	l.mu.Unlock()
	l.sink(NodeEvent{Kind: NodeMoved, Node: node})
	go func() {
		l.confirm(node)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		l.leaveAll(ctx, others)
	}()
}

// confirm tells the winner it serves the session.
func (l *busLink) confirm(node string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// A lost confirmation is repaired by the node: it claims again on
	// the client's next binding request (groupReclaim in package sfu).
	_, _ = l.b.c.Request(ctx, node, bus.Request{Type: bus.RequestClaimed, Session: l.req.Session})
}

// unclaimedLocked returns the nodes the session was offered to that do not
// hold it.
func (l *busLink) unclaimedLocked() []string {
	var out []string
	for n := range l.offered {
		if n != l.node {
			out = append(out, n)
		}
	}
	return out
}

// leaveAll sends RequestLeave for the session to nodes, errors ignored (a
// node that holds nothing drops it anyway after its pending time).
func (l *busLink) leaveAll(ctx context.Context, nodes []string) {
	for _, n := range nodes {
		_, _ = l.b.c.Request(ctx, n, bus.Request{Type: bus.RequestLeave, Session: l.req.Session})
	}
}

// candidateGroup trickles a client candidate: to the winner, or before a
// claim to every node the session was offered to.
func (l *busLink) candidateGroup(ctx context.Context, req bus.Request) error {
	l.mu.Lock()
	joined, winner := l.joined, l.winner
	nodes := make([]string, 0, len(l.offered))
	for n := range l.offered {
		nodes = append(nodes, n)
	}
	l.mu.Unlock()
	if !joined {
		return fmt.Errorf("%w: candidate before the first offer", ErrState)
	}
	if winner != "" {
		return l.send(ctx, req)
	}
	for _, n := range nodes {
		_, _ = l.b.c.Request(ctx, n, req)
	}
	return nil
}
