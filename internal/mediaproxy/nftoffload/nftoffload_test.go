//go:build linux

package nftoffload

import (
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/kfast/kfasttest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// TestOffloadTakesOverFlow sends RTP from a client namespace through the
// media proxy in the gateway namespace to an echoing server namespace and
// runs the offloaders' conformance suite (kfasttest.LabSuite) on it: after
// the first packets the flow moves into nftables; from then on user space
// forwards nothing while every packet still comes back and the rule
// counters count each; removing the flow hands it back to user space.
// Deleting the call removes the rules.
func TestOffloadTakesOverFlow(t *testing.T) {
	l := kfasttest.New(t, true)
	off := kfasttest.InGateway(t, l, func() (*Offloader, error) { return New(Config{NetNS: int(l.Gateway), StatsMaxAge: time.Millisecond}) })
	c := kfasttest.StartCall(t, l, off)
	p := c.Proxy
	c.WaitOffloaded(t)
	const n = 200
	kfasttest.LabSuite(t, c, n, 100*time.Millisecond)
	if err := p.DeleteCall("k"); err != nil {
		t.Fatal(err)
	}
	if off.Flows() != 0 {
		t.Fatal("flow not removed")
	}
	// With the call gone the packet reaches user space and is dropped.
	drops := p.Counters().DropUnknownSSRC.Load()
	c.Send()
	testkit.WaitFor(t, 5*time.Second, "the packet to be dropped in user space",
		func() bool { return p.Counters().DropUnknownSSRC.Load() > drops })
}
