package main

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

var testMainEnv = []string{"TRAVERSE_TEST_MAIN=1"}

// TestFailoverKill: bus, two SFU nodes and signal as separate processes,
// two participants in a call; SIGKILL the node holding it: both get a
// rejoin message, rejoin the other node and receive media again within
// 5 s of the kill.
func TestFailoverKill(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rounds, err := runFailoverRounds(ctx, os.Args[0], testMainEnv, t.TempDir(), 1, 5*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := rounds[0]
	t.Logf("killed %s: rejoin message after %v, media again after %v (longest gap %v)", r.Node, r.Detect, r.Media, r.Gap)
	if r.Detect > bus.NodeExpiry+time.Second {
		t.Errorf("death declared %v after the kill, want within %v", r.Detect, bus.NodeExpiry+time.Second)
	}
}

// newLab starts a failover lab with the named signal processes and an API
// for participants.
func newLab(t *testing.T, signals ...string) (*failoverLab, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	dir := t.TempDir()
	l, err := startFailoverLab(ctx, os.Args[0], testMainEnv, dir, nil, signals...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l, ctx
}

func labDial(t *testing.T, ctx context.Context, l *failoverLab, signal, room, id, tok string) *failoverClient {
	t.Helper()
	api, err := loadgen.NewAPI(false, netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := l.dial(ctx, api, signal, room, id, tok)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.c.Close() })
	return c
}

// TestFailoverDrain: "traverse sfu drain NODE" with the signal
// credential makes the node not ready at once, its participants get
// rejoin messages (reason drain), move to the other node and receive
// media again, and the drained node exits by itself once empty. The
// node's own credential is refused.
func TestFailoverDrain(t *testing.T) {
	l, ctx := newLab(t, "signal")
	cs := []*failoverClient{labDial(t, ctx, l, "signal", "call", "alice", ""), labDial(t, ctx, l, "signal", "call", "bob", "")}
	if err := receivingSince(ctx, cs, 15*time.Second, func(c *failoverClient) bool { return receives(c, 2) }); err != nil {
		t.Fatal(err)
	}
	node := cs[0].sig.Node()
	// A forged announcement (a node's own credential, a room that is not a
	// name) is dropped and counted by signal; the call goes on.
	nb, err := bus.Connect(bus.Config{URLs: []string{l.bus}, CredsFile: l.creds("sfu-" + node)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := nb.Conn().Publish(bus.NodeAnnounceSubject(node), []byte(`{"node":"`+node+`","udp":"127.0.0.1:1","rooms":["no such room"]}`)); err != nil {
		t.Fatal(err)
	}
	_ = nb.Conn().Flush()
	nb.Close()
	testkit.WaitFor(t, 5*time.Second, "signal counts the forged announcement", func() bool {
		_, body, err := httpGet("http://" + l.procs["signal"].admin + "/metrics")
		return err == nil && strings.Contains(body, `traverse_bus_client_bad_messages_total{role="signal"} 1`)
	})
	if err := runSFUDrain(ctx, []string{"--nats", l.bus, "--nats-creds", l.creds("sfu-" + node), node}); err == nil ||
		!strings.Contains(err.Error(), "signal credential") {
		t.Fatalf("drain with the node's credential: %v", err)
	}
	if err := runSFUDrain(ctx, []string{"--nats", l.bus, "--nats-creds", l.creds("signal"), "--period", "500ms", "--log-level", "error", node}); err != nil {
		t.Fatal(err)
	}
	p := l.procs[node]
	if err := l.waitReady(ctx, p, false, 5*time.Second); err != nil {
		// The node may already have exited, which is not ready either.
		select {
		case err := <-p.exited:
			p.exited <- err
		default:
			t.Fatal(err)
		}
	}
	err = receivingSince(ctx, cs, 10*time.Second, func(c *failoverClient) bool {
		rs := c.c.Rejoins()
		return len(rs) == 1 && !rs[0].MediaAgain.IsZero()
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if r := c.c.Rejoins()[0]; r.Reason != bus.RejoinDrain || c.sig.Node() == node {
			t.Errorf("rejoin %+v, now on %s", r, c.sig.Node())
		}
	}
	select {
	case err := <-p.exited:
		if err != nil {
			t.Errorf("drained node exited with %v", err)
		}
		delete(l.procs, node)
	case <-time.After(10 * time.Second):
		t.Fatalf("drained node %s still running; log %s", node, l.tail(node))
	}
}

// TestSignalRestartLosesNoRoom: two signal processes; alice joins through
// s1, bob through s2 (s2 sends him to alice's node, learnt from the node's
// announcement alone); s1 is killed; alice reconnects with her token to
// s2, lands on the same node as bob, and both receive each other again.
func TestSignalRestartLosesNoRoom(t *testing.T) {
	l, ctx := newLab(t, "s1", "s2")
	tok, err := loadgen.DemoTokens("ws://"+l.signals["s1"]+"/ws")(ctx, "room1", "alice")
	if err != nil {
		t.Fatal(err)
	}
	alice := labDial(t, ctx, l, "s1", "room1", "alice", tok)
	// Wait until the node announces the room, as s2 will learn it.
	watch, err := bus.Connect(bus.Config{URLs: []string{l.bus}, CredsFile: l.creds("signal")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close()
	announced := make(chan struct{}, 1)
	sub, err := watch.SubscribeNodes(func(a bus.NodeAnnounce) {
		if a.Node == alice.sig.Node() && len(a.Rooms) == 1 && a.Rooms[0] == "room1" {
			select {
			case announced <- struct{}{}:
			default:
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	select {
	case <-announced:
	case <-time.After(5 * time.Second):
		t.Fatal("the node never announced room1")
	}
	bob := labDial(t, ctx, l, "s2", "room1", "bob", "")
	if bob.sig.Node() != alice.sig.Node() {
		t.Fatalf("bob on %s, alice on %s: s2 did not follow the room", bob.sig.Node(), alice.sig.Node())
	}
	if err := receivingSince(ctx, []*failoverClient{alice, bob}, 15*time.Second, func(c *failoverClient) bool { return receives(c, 2) }); err != nil {
		t.Fatal(err)
	}
	if err := l.kill("s1"); err != nil {
		t.Fatal(err)
	}
	alice.c.Close()
	alice2 := labDial(t, ctx, l, "s2", "room1", "alice", tok)
	if alice2.sig.Node() != bob.sig.Node() {
		t.Fatalf("alice back on %s, bob on %s: the room was lost", alice2.sig.Node(), bob.sig.Node())
	}
	n0 := len(bob.c.Tracks())
	testkit.WaitFor(t, 15*time.Second, "media both ways again", func() bool {
		if !receives(alice2, 2) {
			return false
		}
		fresh := 0
		for _, tr := range bob.c.Tracks()[n0:] {
			if tr.Packets() > 10 {
				fresh++
			}
		}
		return fresh >= 2
	})
}
