//go:build linux

package nftoffload

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/addrpolicy"
	"github.com/traverse-rtc/traverse/internal/mediaproxy"
)

// TestOffloadTakesOverFlow sends RTP from a client namespace through the
// media proxy in the gateway namespace to an echoing server namespace. After
// the first packets the flow moves into nftables; from then on the
// user-space packet counter must stop growing while every packet still comes
// back, the kernel counters must grow instead, and removing the call must
// remove the rules.
func TestOffloadTakesOverFlow(t *testing.T) {
	l := newLab(t)
	var off *Offloader
	var p *mediaproxy.Proxy
	l.in(t, l.gw, func() {
		var err error
		off, err = New(Config{NetNS: int(l.gw), StatsMaxAge: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		p, err = mediaproxy.New(mediaproxy.Config{
			RTP: netip.AddrPortFrom(outsideIP, 7000), RTCP: netip.AddrPortFrom(outsideIP, 7001),
			InsideIP: insideIP, InsidePorts: mediaproxy.PortRange{Low: 30000, High: 30100},
			Offloader: off, OffloadAfter: 20, Tick: 20 * time.Millisecond,
			// The lab's outside network is private: the destination
			// policy refuses it unless allowed.
			Policy: addrpolicy.Filter{Allow: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}},
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { p.Close(); off.Close() })

	var client, server *net.UDPConn
	l.in(t, l.client, func() {
		var err error
		if client, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(clientIP, 4000))); err != nil {
			t.Fatal(err)
		}
	})
	l.in(t, l.server, func() {
		var err error
		if server, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(serverIP, 5000))); err != nil {
			t.Fatal(err)
		}
	})
	defer client.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	var mu sync.Mutex
	var sawFrom netip.AddrPort
	go func() { // the server echoes
		defer wg.Done()
		buf := make([]byte, 2048)
		for {
			n, a, err := server.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			mu.Lock()
			sawFrom = a
			mu.Unlock()
			_, _ = server.WriteToUDPAddrPort(buf[:n], a)
		}
	}()
	defer func() { server.Close(); wg.Wait() }()

	var r mediaproxy.Reply
	l.in(t, l.gw, func() {
		var err error
		r, err = p.Apply(&mediaproxy.Descriptor{Op: mediaproxy.OpUpsert, Flags: mediaproxy.FlagCallerOutside | mediaproxy.FlagSSRC,
			SSRC: 77, CallID: "k", Client: netip.AddrPortFrom(clientIP, 4000), Server: netip.AddrPortFrom(serverIP, 5000)})
		if err != nil {
			t.Fatal(err)
		}
	})
	fixed := netip.AddrPortFrom(outsideIP, 7000)
	pkt := make([]byte, 172)
	pkt[0] = 0x80
	binary.BigEndian.PutUint32(pkt[8:], 77)
	buf := make([]byte, 2048)
	roundTrip := func(seq int) {
		t.Helper()
		binary.BigEndian.PutUint16(pkt[2:], uint16(seq))
		if _, err := client.WriteToUDPAddrPort(pkt, fixed); err != nil {
			t.Fatal(err)
		}
		_ = client.SetReadDeadline(time.Now().Add(3 * time.Second))
		for {
			n, from, err := client.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("packet %d: %v", seq, err)
			}
			if n == len(pkt) && from == fixed && binary.BigEndian.Uint16(buf[2:]) == uint16(seq) {
				return
			}
		}
	}
	seq := 0
	for ; seq < 40; seq++ {
		roundTrip(seq)
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.Counters().Offloads.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("not offloaded; errors %d", p.Counters().OffloadErrors.Load())
		}
		roundTrip(seq)
		seq++
	}
	// Let packets in flight before the rules landed drain, then measure.
	for i := 0; i < 5; i++ {
		roundTrip(seq)
		seq++
	}
	// Packets queued on the sockets before the rules landed may still be
	// forwarded by user space: wait until its counters settle.
	settled := func() uint64 { return p.Counters().RTPIn.Load() + p.Counters().RTPOut.Load() }
	last, same := settled(), 0
	waitFor(t, func() bool {
		if v := settled(); v != last {
			last, same = v, 0
			return false
		}
		same++
		return same >= 10
	})
	userIn, userOut := p.Counters().RTPIn.Load(), p.Counters().RTPOut.Load()
	const n = 200
	for i := 0; i < n; i++ {
		roundTrip(seq)
		seq++
	}
	if d := p.Counters().RTPIn.Load() - userIn + p.Counters().RTPOut.Load() - userOut; d != 0 {
		t.Errorf("user space still forwarded %d packets after offload", d)
	}
	mu.Lock()
	got := sawFrom
	mu.Unlock()
	if want := netip.AddrPortFrom(insideIP, r.InsideRTP); got != want {
		t.Errorf("server saw packets from %v, want the inside port %v", got, want)
	}
	// Stats reads the rule counters at most every StatsMaxAge (the proxy
	// polls them too), so wait for a fresh read rather than take the
	// first, possibly cached, one.
	flow := mediaproxy.Flow{Client: netip.AddrPortFrom(clientIP, 4000), Fixed: fixed,
		Inside: netip.AddrPortFrom(insideIP, r.InsideRTP), Server: netip.AddrPortFrom(serverIP, 5000), ServerSrc: netip.AddrPortFrom(serverIP, 5000)}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		pk, _, err := off.Stats(flow)
		if err == nil && pk >= 2*n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kernel counted %d packets (%v), want >= %d", pk, err, 2*n)
		}
	}
	waitFor(t, func() bool { return p.Counters().KernelPackets.Load() >= 2*n })
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
	_, _ = client.WriteToUDPAddrPort(pkt, fixed)
	waitFor(t, func() bool { return p.Counters().DropUnknownSSRC.Load() > drops })
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
