//go:build linux

package kfasttest

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/addrpolicy"
	"github.com/traverse-rtc/traverse/internal/mediaproxy"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// The call the media proxy offloaders' lab tests carry: client 10.1.0.2:4000
// calls server 10.2.0.2:5000 through the proxy's fixed port
// 10.1.0.1:7000, with SSRC 77.
var (
	CallClient = netip.AddrPortFrom(ClientIP, 4000)
	CallServer = netip.AddrPortFrom(ServerIP, 5000)
	CallFixed  = netip.AddrPortFrom(OutsideIP, 7000)
)

// CallSSRC is the SSRC of the call's RTP stream.
const CallSSRC = 77

// Call is one media-proxy call across the lab: a proxy in the gateway
// handing its flows to an offloader after 20 packets, a client socket in
// the client namespace, and a server in the server namespace that echoes
// every packet back. Everything is closed when the test ends.
type Call struct {
	Proxy *mediaproxy.Proxy
	// Flow is the call's RTP flow as the proxy hands it to the offloader.
	Flow mediaproxy.Flow
	// Seq is the sequence number the next RoundTrip sends.
	Seq int

	off      mediaproxy.Offloader
	kernel   uint64 // the offloader's last count of the flow
	client   *net.UDPConn
	pkt, buf []byte
	mu       sync.Mutex     // guards sawFrom
	sawFrom  netip.AddrPort // where the server's last packet came from
}

// StartCall starts the proxy (with off as its offloader) in the lab's
// gateway, the client and the echoing server, and upserts the call "k"
// (caller outside, SSRC demultiplexed) between them. Register off's Close
// with t.Cleanup before calling it: the proxy closes first.
func StartCall(t *testing.T, l *Lab, off mediaproxy.Offloader) *Call {
	t.Helper()
	c := &Call{off: off, pkt: make([]byte, 172), buf: make([]byte, 2048)}
	l.In(t, l.Gateway, func() {
		var err error
		c.Proxy, err = mediaproxy.New(mediaproxy.Config{
			RTP: CallFixed, RTCP: netip.AddrPortFrom(OutsideIP, 7001),
			InsideIP: InsideIP, InsidePorts: mediaproxy.PortRange{Low: 30000, High: 30100},
			Offloader: off, OffloadAfter: 20, Tick: 20 * time.Millisecond,
			// The lab's outside network is private: the destination
			// policy refuses it unless allowed.
			Policy: addrpolicy.Filter{Allow: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}},
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { c.Proxy.Close() })
	l.In(t, l.Client, func() { c.client = testkit.ListenUDP(t, CallClient) })
	var server *net.UDPConn
	l.In(t, l.Server, func() { server = testkit.ListenUDP(t, CallServer) })
	testkit.Echo(t, server, func(from netip.AddrPort) {
		c.mu.Lock()
		c.sawFrom = from
		c.mu.Unlock()
	})

	var r mediaproxy.Reply
	l.In(t, l.Gateway, func() {
		var err error
		r, err = c.Proxy.Apply(&mediaproxy.Descriptor{Op: mediaproxy.OpUpsert, Flags: mediaproxy.FlagCallerOutside | mediaproxy.FlagSSRC,
			SSRC: CallSSRC, CallID: "k", Client: CallClient, Server: CallServer})
		if err != nil {
			t.Fatal(err)
		}
	})
	c.Flow = mediaproxy.Flow{Client: CallClient, Fixed: CallFixed,
		Inside: netip.AddrPortFrom(InsideIP, r.InsideRTP), Server: CallServer, ServerSrc: CallServer}
	c.pkt[0] = 0x80
	binary.BigEndian.PutUint32(c.pkt[8:], CallSSRC)
	return c
}

// Send sends the client's next RTP packet to the fixed port without
// waiting for its echo.
func (c *Call) Send() {
	binary.BigEndian.PutUint16(c.pkt[2:], uint16(c.Seq))
	_, _ = c.client.WriteToUDPAddrPort(c.pkt, CallFixed)
}

// RoundTrip sends the client's next RTP packet and waits (3 s at most) for
// the server's echo of it to come back from the fixed port.
func (c *Call) RoundTrip(t *testing.T) {
	t.Helper()
	seq := c.Seq
	c.Seq++
	binary.BigEndian.PutUint16(c.pkt[2:], uint16(seq))
	if _, err := c.client.WriteToUDPAddrPort(c.pkt, CallFixed); err != nil {
		t.Fatal(err)
	}
	_ = c.client.SetReadDeadline(time.Now().Add(3 * time.Second))
	for {
		n, from, err := c.client.ReadFromUDPAddrPort(c.buf)
		if err != nil {
			t.Fatalf("packet %d: %v", seq, err)
		}
		if n == len(c.pkt) && from == CallFixed && binary.BigEndian.Uint16(c.buf[2:]) == uint16(seq) {
			return
		}
	}
}

// UserSpace is the number of RTP packets the proxy forwarded itself, both
// directions.
func (c *Call) UserSpace(*testing.T) uint64 {
	return c.Proxy.Counters().RTPIn.Load() + c.Proxy.Counters().RTPOut.Load()
}

// ServerSawFrom is the source address of the last packet the server got.
func (c *Call) ServerSawFrom() netip.AddrPort {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sawFrom
}

// WaitOffloaded runs 40 round trips, then more until the proxy has handed
// the flow to its offloader (5 s at most), a few more, and then waits for
// the proxy's own counters to settle: packets queued on its sockets before
// the kernel took over may still be forwarded by user space.
func (c *Call) WaitOffloaded(t *testing.T) {
	t.Helper()
	for range 40 {
		c.RoundTrip(t)
	}
	deadline := time.Now().Add(5 * time.Second)
	for c.Proxy.Counters().Offloads.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("not offloaded; errors %d", c.Proxy.Counters().OffloadErrors.Load())
		}
		c.RoundTrip(t)
	}
	for range 5 {
		c.RoundTrip(t)
	}
	last, same := c.UserSpace(nil), 0
	testkit.WaitFor(t, 5*time.Second, "the proxy's counters to settle", func() bool {
		if v := c.UserSpace(nil); v != last {
			last, same = v, 0
			return false
		}
		same++
		return same >= 20 // unchanged for 100 ms
	})
}

// InGateway makes an offloader with newOff in the lab's gateway namespace,
// failing the test if it cannot, and closes it when the test ends (after
// anything registered later, such as a StartCall's proxy).
func InGateway[T interface{ Close() error }](t *testing.T, l *Lab, newOff func() (T, error)) T {
	t.Helper()
	var off T
	l.In(t, l.Gateway, func() {
		var err error
		if off, err = newOff(); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { _ = off.Close() })
	return off
}

// The Call is a Path of LabSuite: its offloader carries the call's flow.
var _ Path = (*Call)(nil)

// Kernel is the offloader's count of the flow's packets (its last one once
// the flow is handed back).
func (c *Call) Kernel(t *testing.T) uint64 {
	t.Helper()
	if pk, _, err := c.off.Stats(c.Flow); err == nil {
		c.kernel = pk
	}
	return c.kernel
}

// HandBack first checks what the proxy reports of the offloaded flow: the
// server sees the inside port as source, the proxy reads the kernel's
// count, and a query reports the call offloaded with every packet counted.
// Then it removes the flow from the offloader; the proxy keeps forwarding
// it in user space.
func (c *Call) HandBack(t *testing.T) {
	t.Helper()
	if got, want := c.ServerSawFrom(), c.Flow.Inside; got != want {
		t.Errorf("server saw packets from %v, want the inside port %v", got, want)
	}
	k := c.Kernel(t)
	testkit.WaitFor(t, 5*time.Second, "the proxy to read the kernel's count",
		func() bool { return c.Proxy.Counters().KernelPackets.Load() >= k })
	q, err := c.Proxy.Apply(&mediaproxy.Descriptor{Op: mediaproxy.OpQuery, CallID: "k"})
	if err != nil || !q.Offloaded || q.ToServer+q.ToClient < k {
		t.Errorf("query after offload: %+v %v (kernel count %d)", q, err, k)
	}
	if err := c.off.Remove(c.Flow); err != nil {
		t.Fatal(err)
	}
}
