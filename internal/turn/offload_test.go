package turn

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/traverse-rtc/traverse/internal/turn/turntest"
)

// fakeOffloader records what the server asks of the kernel path.
type fakeOffloader struct {
	mu       sync.Mutex
	flows    map[OffloadFlow]time.Time
	installs int
	removes  int
	counts   map[OffloadFlow][2]OffloadCounts
}

func newFakeOffloader() *fakeOffloader {
	return &fakeOffloader{flows: map[OffloadFlow]time.Time{}, counts: map[OffloadFlow][2]OffloadCounts{}}
}

func (f *fakeOffloader) Install(fl OffloadFlow, deadline time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.flows[fl] = deadline
	f.installs++
	return nil
}

func (f *fakeOffloader) Remove(fl OffloadFlow) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.flows[fl]; ok {
		f.removes++
	}
	delete(f.flows, fl)
	delete(f.counts, fl)
	return nil
}

func (f *fakeOffloader) Counters(fl OffloadFlow) (OffloadCounts, OffloadCounts, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.counts[fl]
	return c[0], c[1], nil
}

func (f *fakeOffloader) add(fl OffloadFlow, up, down OffloadCounts) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.counts[fl]
	c[0].Packets += up.Packets
	c[0].Bytes += up.Bytes
	c[1].Packets += down.Packets
	c[1].Bytes += down.Bytes
	f.counts[fl] = c
}

func (f *fakeOffloader) snapshot() (map[OffloadFlow]time.Time, int, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := map[OffloadFlow]time.Time{}
	for k, v := range f.flows {
		m[k] = v
	}
	return m, f.installs, f.removes
}

// TestOffloadLifecycle: the server installs a UDP client's channel when it
// is bound, with the earliest of the channel's, the permission's and the
// allocation's expiry as deadline; moves the deadline on refreshes; removes
// the flow when the permission expires or the allocation goes; and counts
// the kernel's packets in its metrics.
func TestOffloadLifecycle(t *testing.T) {
	verifyNoLeaks(t)
	off := newFakeOffloader()
	s, _ := newTestServer(t, func(c *Config) { c.AllowLoopbackPeers = true; c.Offloader = off })
	peer := netip.MustParseAddrPort(turntest.UDPEcho(t).LocalAddr().String())
	c := newSTUNClient(t, s.Addr(), testUser, testPass)
	relayed := c.allocate()
	client := netip.MustParseAddrPort(c.c.LocalAddr().String())
	want := OffloadFlow{Client: client, Listen: s.Addr(), Relayed: relayed, Peer: peer, Channel: 0x4001}

	before := time.Now()
	if code := errCode(c.do(stun.MethodChannelBind, channelAttr(0x4001), peerAttr(peer))); code != 0 {
		t.Fatalf("channel bind: %d", code)
	}
	flows, installs, _ := off.snapshot()
	dl, ok := flows[want]
	if len(flows) != 1 || !ok || installs != 1 {
		t.Fatalf("after ChannelBind: flows %v, %d installs; want %+v", flows, installs, want)
	}
	// The permission (300 s) expires before the channel (600 s).
	if dl.Before(before.Add(permissionLifetime)) || dl.After(time.Now().Add(permissionLifetime)) {
		t.Errorf("deadline %v, want the permission's expiry (%v from now)", time.Until(dl), permissionLifetime)
	}
	if got := testutil.ToFloat64(s.m.offloadFlows); got != 1 {
		t.Errorf("offload_flows = %v", got)
	}

	// A refreshed permission moves the deadline.
	time.Sleep(5 * time.Millisecond)
	if code := errCode(c.do(stun.MethodCreatePermission, peerAttr(peer))); code != 0 {
		t.Fatalf("create permission: %d", code)
	}
	flows, installs, _ = off.snapshot()
	if installs != 2 || !flows[want].After(dl) {
		t.Errorf("after CreatePermission: %d installs, deadline moved %v", installs, flows[want].Sub(dl))
	}

	// Kernel counters reach the metrics.
	off.add(want, OffloadCounts{Packets: 10, Bytes: 1600}, OffloadCounts{Packets: 7, Bytes: 1120})
	s.offloadPoll(time.Now())
	if p, b := testutil.ToFloat64(s.m.offloadToPeerPackets), testutil.ToFloat64(s.m.offloadToPeerBytes); p != 10 || b != 1600 {
		t.Errorf("offload to_peer %v packets %v bytes", p, b)
	}
	if p := testutil.ToFloat64(s.m.offloadToClientPackets); p != 7 {
		t.Errorf("offload to_client %v packets", p)
	}
	if p := testutil.ToFloat64(s.m.toPeerPackets); p < 10 {
		t.Errorf("relayed to_peer %v packets: kernel packets not in the total", p)
	}

	// The permission expires (the channel has not): the flow leaves the
	// kernel, and its last counts are taken.
	off.add(want, OffloadCounts{Packets: 1, Bytes: 100}, OffloadCounts{})
	s.sweep(time.Now().Add(permissionLifetime + time.Second).UnixNano())
	if flows, _, removes := off.snapshot(); len(flows) != 0 || removes != 1 {
		t.Fatalf("after the permission expired: flows %v, %d removes", flows, removes)
	}
	if p := testutil.ToFloat64(s.m.offloadToPeerPackets); p != 11 {
		t.Errorf("offload to_peer %v packets after removal, want 11", p)
	}
	if got := testutil.ToFloat64(s.m.offloadFlows); got != 0 {
		t.Errorf("offload_flows = %v", got)
	}

	// Bound again; then the allocation is deleted: removed.
	if code := errCode(c.do(stun.MethodChannelBind, channelAttr(0x4001), peerAttr(peer))); code != 0 {
		t.Fatalf("channel bind: %d", code)
	}
	if flows, _, _ := off.snapshot(); len(flows) != 1 {
		t.Fatalf("after the second ChannelBind: flows %v", flows)
	}
	if code := errCode(c.do(stun.MethodRefresh, lifetimeSetter(0))); code != 0 {
		t.Fatalf("refresh 0: %d", code)
	}
	if flows, _, removes := off.snapshot(); len(flows) != 0 || removes != 2 {
		t.Fatalf("after deallocation: flows %v, %d removes", flows, removes)
	}
}

// TestOffloadBandwidth: an allocation that relays more than its quota in
// the kernel goes back to user space, and returns after the block.
func TestOffloadBandwidth(t *testing.T) {
	off := newFakeOffloader()
	s, _ := newTestServer(t, func(c *Config) {
		c.AllowLoopbackPeers = true
		c.Offloader = off
		c.BandwidthPerAllocation = 1000
	})
	peer := netip.MustParseAddrPort(turntest.UDPEcho(t).LocalAddr().String())
	c := newSTUNClient(t, s.Addr(), testUser, testPass)
	relayed := c.allocate()
	if code := errCode(c.do(stun.MethodChannelBind, channelAttr(0x4001), peerAttr(peer))); code != 0 {
		t.Fatalf("channel bind: %d", code)
	}
	fl := OffloadFlow{Client: netip.MustParseAddrPort(c.c.LocalAddr().String()), Listen: s.Addr(), Relayed: relayed, Peer: peer, Channel: 0x4001}
	if flows, _, _ := off.snapshot(); len(flows) != 1 {
		t.Fatalf("not offloaded: %v", flows)
	}
	off.add(fl, OffloadCounts{Packets: 50, Bytes: 50000}, OffloadCounts{})
	s.offloadPoll(time.Now())
	if flows, _, _ := off.snapshot(); len(flows) != 0 {
		t.Fatalf("over its quota, still offloaded")
	}
	if got := testutil.ToFloat64(s.m.quotaHits.WithLabelValues("offload_bandwidth")); got != 1 {
		t.Errorf("offload_bandwidth quota hits = %v", got)
	}
	// A ChannelBind refresh during the block keeps it in user space.
	if code := errCode(c.do(stun.MethodChannelBind, channelAttr(0x4001), peerAttr(peer))); code != 0 {
		t.Fatalf("channel bind: %d", code)
	}
	if flows, _, _ := off.snapshot(); len(flows) != 0 {
		t.Fatalf("offloaded again during the block")
	}
	s.offloadPoll(time.Now().Add(offloadBlock + time.Second))
	if flows, _, _ := off.snapshot(); len(flows) != 1 {
		t.Fatalf("not offloaded again after the block")
	}
}

// TestOffloadOnlyUDP: stream clients are never offloaded.
func TestOffloadOnlyUDP(t *testing.T) {
	off := newFakeOffloader()
	s, _ := newTestServer(t, func(c *Config) { c.AllowLoopbackPeers = true; c.Offloader = off })
	a := &allocation{key: fiveTuple{proto: protoTCP, client: netip.MustParseAddrPort("127.0.0.1:1")}, relayed: netip.MustParseAddrPort("127.0.0.1:2")}
	if s.offloadable(a) {
		t.Error("a TCP client's allocation is offloadable")
	}
}
