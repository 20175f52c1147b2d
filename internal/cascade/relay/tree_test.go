package relay

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
	"github.com/traverse-rtc/traverse/internal/cascade/routes"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

const nD NodeID = 4

// TestHoldersForwardOncePerLink: the controller's distribution tree
// (routes.Tree) applied to real endpoints on loopback: the publisher's
// node sends to the nodes it holds the track for, a holder forwards what
// it receives to its own (SetForward), hops between forward by their
// tables. Every link carries each packet once (counted by the links' data
// messages), every needing node receives each packet once, a holder
// without subscribers does not hand the track to its SFU, and nothing
// crosses a link the tree does not use.
func TestHoldersForwardOncePerLink(t *testing.T) {
	for _, c := range []struct {
		name  string
		links map[[2]NodeID]float64 // both ways, ms
		need  []NodeID              // nodes with subscribers
		relay []NodeID              // nodes expected to hold without subscribers
		want  map[[2]NodeID]bool    // the links the track crosses
	}{
		{name: "B and C close, far from A: A -> B -> C, A-C unused",
			links: map[[2]NodeID]float64{{nA, nB}: 10, {nA, nC}: 10, {nB, nC}: 1},
			need:  []NodeID{nB, nC}, want: map[[2]NodeID]bool{{nA, nB}: true, {nB, nC}: true}},
		{name: "chain A-B-C-D: B only a hop, C holds for D",
			links: map[[2]NodeID]float64{{nA, nB}: 1, {nB, nC}: 1, {nC, nD}: 1},
			need:  []NodeID{nC, nD}, want: map[[2]NodeID]bool{{nA, nB}: true, {nB, nC}: true, {nC, nD}: true}},
		{name: "Y: B holds for C and D without subscribers of its own",
			links: map[[2]NodeID]float64{{nA, nB}: 5, {nB, nC}: 1, {nB, nD}: 1, {nA, nC}: 20, {nA, nD}: 20},
			need:  []NodeID{nC, nD}, relay: []NodeID{nB},
			want: map[[2]NodeID]bool{{nA, nB}: true, {nB, nC}: true, {nB, nD}: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ns := startNodes(t, nA, nB, nC, nD)
			r := routes.New(routes.Config{})
			for id := range ns {
				r.AddNode(routes.NodeID(id))
			}
			for l, ms := range c.links {
				m := routes.Metrics{RTT: time.Duration(ms * float64(time.Millisecond)), Up: true}
				r.Report(routes.NodeID(l[0]), routes.NodeID(l[1]), m)
				r.Report(routes.NodeID(l[1]), routes.NodeID(l[0]), m)
			}
			r.Compute(time.Now())
			var need []routes.NodeID
			for _, n := range c.need {
				need = append(need, routes.NodeID(n))
			}
			tree := r.Tree(routes.NodeID(nA), need, routes.Tree{})
			if len(tree.Unreached) > 0 || tree.Shared > 0 {
				t.Fatalf("tree %+v", tree)
			}
			isNeed := map[NodeID]bool{}
			for _, n := range c.need {
				isNeed[n] = true
			}
			for id, n := range ns {
				next := map[NodeID]NodeID{}
				for d, v := range r.Table(routes.NodeID(id)) {
					next[NodeID(d)] = NodeID(v)
				}
				n.e.SetRoutes(1, next)
				var dsts []NodeID
				for _, d := range tree.Forward[routes.NodeID(id)] {
					dsts = append(dsts, NodeID(d))
				}
				if id == nA {
					if err := n.e.SetNeed(key, dsts); err != nil {
						t.Fatal(err)
					}
				} else if len(dsts) > 0 {
					if err := n.e.SetForward(key, dsts, isNeed[id]); err != nil {
						t.Fatal(err)
					}
				}
			}
			for _, id := range c.relay {
				if len(tree.Forward[routes.NodeID(id)]) == 0 {
					t.Fatalf("%d holds nothing: %v", id, tree.Forward)
				}
			}
			const count = 300
			rtp := make([]byte, 800)
			for range count {
				ns[nA].e.Send(key, 0, rtp)
			}
			testkit.WaitFor(t, 5*time.Second, "every needing node to receive every packet", func() bool {
				for _, n := range c.need {
					if ns[n].sfu.media.Load() < count {
						return false
					}
				}
				return true
			})
			// A duplicate or a stray copy would arrive within this.
			if testkit.Eventually(300*time.Millisecond, func() bool {
				for id, n := range ns {
					if n.sfu.media.Load() > 0 && !isNeed[id] || n.sfu.media.Load() > count {
						return true
					}
				}
				return false
			}) {
				t.Error("a node received a packet twice or without needing it")
			}
			for id, n := range ns {
				want := int64(0)
				if isNeed[id] {
					want = count
				}
				if got := n.sfu.media.Load(); got != want {
					t.Errorf("node %d's SFU got %d packets, want %d", id, got, want)
				}
				for peer, sent := range n.e.DataSent() {
					want := uint64(0)
					if c.want[[2]NodeID{id, peer}] {
						want = count
					}
					if sent != want {
						t.Errorf("link %d -> %d carried %d data messages, want %d", id, peer, sent, want)
					}
				}
			}
		})
	}
}

// TestForwardLoopEnds: holders that forward to each other (a controller's
// mistake, or commands applied in between) pass a message around once:
// B, back from C, has accepted it already and drops it as a duplicate
// (its end-to-end sequence window), so each delivers it once and the
// loop ends before the hop limit would (which still ends routing loops:
// TestDropsAndCounts).
func TestForwardLoopEnds(t *testing.T) {
	ns := startNodes(t, nA, nB, nC)
	a, b, c := ns[nA], ns[nB], ns[nC]
	a.e.SetRoutes(1, map[NodeID]NodeID{nB: nB, nC: nC})
	b.e.SetRoutes(1, map[NodeID]NodeID{nA: nA, nC: nC})
	c.e.SetRoutes(1, map[NodeID]NodeID{nA: nA, nB: nB})
	if err := a.e.SetNeed(key, []NodeID{nB}); err != nil {
		t.Fatal(err)
	}
	if err := b.e.SetForward(key, []NodeID{nC}, true); err != nil {
		t.Fatal(err)
	}
	if err := c.e.SetForward(key, []NodeID{nB}, true); err != nil {
		t.Fatal(err)
	}
	a.e.Send(key, 0, make([]byte, 100))
	testkit.WaitFor(t, 5*time.Second, "the copy back at B dropped as a duplicate", func() bool {
		return b.metric(t, "traverse_relay_dropped_total", "reason", "duplicate") == 1
	})
	if got := b.sfu.media.Load() + c.sfu.media.Load(); got != 2 {
		t.Fatalf("%d deliveries in the loop, want 2 (B and C once)", got)
	}
	if got := b.metric(t, "traverse_relay_dropped_total", "reason", "hop_limit") +
		c.metric(t, "traverse_relay_dropped_total", "reason", "hop_limit"); got != 0 {
		t.Fatalf("%v hop limit drops", got)
	}
}

// TestSetForwardRefuses: too many nodes or a name the header cannot
// carry change nothing.
func TestSetForwardRefuses(t *testing.T) {
	e := startNodes(t, nA)[nA].e
	many := make([]NodeID, MaxNeed+1)
	for i := range many {
		many[i] = NodeID(i + 10)
	}
	if err := e.SetForward(key, many, true); !errors.Is(err, ErrTooMany) {
		t.Fatalf("%d nodes: %v", len(many), err)
	}
	long := StreamKey{Room: strings.Repeat("r", relaywire.MaxName+1), Publisher: "p", Track: "t"}
	if err := e.SetForward(long, []NodeID{nB}, true); !errors.Is(err, ErrName) {
		t.Fatalf("long room name: %v", err)
	}
	if n := len(*e.fwd.Load()); n != 0 {
		t.Fatalf("%d forwards after refusals", n)
	}
	if err := e.SetForward(key, []NodeID{nB, nA, nB, 0}, true); err != nil {
		t.Fatal(err)
	}
	if f := (*e.fwd.Load())[string(forwardKey(nil, key.Room, key.Publisher, key.Track))]; f == nil || len(f.dsts) != 1 || f.dsts[0] != nB {
		t.Fatalf("forward %+v: want B only (itself, 0 and repeats dropped)", f)
	}
	if err := e.SetForward(key, nil, false); err != nil || len(*e.fwd.Load()) != 0 {
		t.Fatalf("cleared: %v, %d left", err, len(*e.fwd.Load()))
	}
}
