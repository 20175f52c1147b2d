//go:build linux

package nftoffload

import (
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/mediaproxy"
	"github.com/traverse-rtc/traverse/internal/mediaproxy/offloadtest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// TestOffloadTakesOverFlow sends RTP from a client namespace through the
// media proxy in the gateway namespace to an echoing server namespace. After
// the first packets the flow moves into nftables; from then on the
// user-space packet counter must stop growing while every packet still comes
// back, the kernel counters must grow instead, and removing the call must
// remove the rules.
func TestOffloadTakesOverFlow(t *testing.T) {
	l := offloadtest.New(t, true)
	off := offloadtest.InGateway(t, l, func() (*Offloader, error) { return New(Config{NetNS: int(l.Gateway), StatsMaxAge: time.Millisecond}) })
	c := offloadtest.StartCall(t, l, off)
	p := c.Proxy
	c.WaitOffloaded(t)
	before := c.UserSpace()
	const n = 200
	for range n {
		c.RoundTrip(t)
	}
	if d := c.UserSpace() - before; d != 0 {
		t.Errorf("user space still forwarded %d packets after offload", d)
	}
	if got, want := c.ServerSawFrom(), c.Flow.Inside; got != want {
		t.Errorf("server saw packets from %v, want the inside port %v", got, want)
	}
	// Stats reads the rule counters at most every StatsMaxAge (the proxy
	// polls them too), so wait for a fresh read rather than take the
	// first, possibly cached, one.
	var pk uint64
	var err error
	if !testkit.Eventually(5*time.Second, func() bool {
		pk, _, err = off.Stats(c.Flow)
		return err == nil && pk >= 2*n
	}) {
		t.Fatalf("kernel counted %d packets (%v), want >= %d", pk, err, 2*n)
	}
	testkit.WaitFor(t, 5*time.Second, "the proxy to read the kernel's count",
		func() bool { return p.Counters().KernelPackets.Load() >= 2*n })
	q, err := p.Apply(&mediaproxy.Descriptor{Op: mediaproxy.OpQuery, CallID: "k"})
	if err != nil || !q.Offloaded || q.ToServer < n || q.ToClient < n {
		t.Errorf("query after offload: %+v %v", q, err)
	}
	if err := p.DeleteCall("k"); err != nil {
		t.Fatal(err)
	}
	if off.Flows() != 0 {
		t.Fatal("flow not removed")
	}
	// With the rules gone the packet reaches user space again and is dropped.
	drops := p.Counters().DropUnknownSSRC.Load()
	c.Send()
	testkit.WaitFor(t, 5*time.Second, "the packet to be dropped in user space",
		func() bool { return p.Counters().DropUnknownSSRC.Load() > drops })
}
