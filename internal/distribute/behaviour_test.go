package distribute

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/metricstest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// BehaviourEnv is one data path serving a table, for the behaviour
// suite: the user-space Server here; the kernel path (internal/kfast/distribution's tests, in
// package distribute_test) runs the same cases.
type BehaviourEnv struct {
	Table *Table
	Dst   netip.AddrPort // where senders send the stream
	Reg   *prometheus.Registry
	// Kernel says the kernel path serves the table: the cases then also
	// check that media did not climb to user space.
	Kernel bool
}

// receiverCount is a receiver's packet counter from the table.
func receiverCount(t *Table, k StreamKey, a netip.AddrPort) uint64 {
	for _, s := range t.Streams() {
		if s.Dst != k.Dst || (s.SSRC != nil) != k.HasSSRC || (k.HasSSRC && *s.SSRC != k.SSRC) {
			continue
		}
		for _, r := range s.Receivers {
			if r.Addr == a {
				return r.Packets
			}
		}
	}
	return 0
}

func userspaceEnv(t *testing.T, mod func(*Config)) BehaviourEnv {
	reg := prometheus.NewRegistry()
	cfg := Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, Registerer: reg, RTCPTimeout: -1,
		UnreachableTimeout: BehaviourUnreachable, ReapInterval: BehaviourReap}
	cfg.Policy.Loopback = true
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, s.Run)
	t.Cleanup(func() { s.Close() })
	return BehaviourEnv{Table: s.Table(), Dst: s.Addrs()[0], Reg: reg}
}

// rtpPacket is a 200-byte RTP packet (12-byte header) of ssrc with
// sequence number seq.
func rtpPacket(ssrc uint32, seq uint16) []byte {
	b := make([]byte, 200)
	b[0], b[1] = 0x80, 96
	binary.BigEndian.PutUint16(b[2:], seq)
	binary.BigEndian.PutUint32(b[4:], uint32(seq)*3000)
	binary.BigEndian.PutUint32(b[8:], ssrc)
	for i := 12; i < len(b); i++ {
		b[i] = byte(i) ^ byte(seq)
	}
	return b
}

// rtcpRR is a minimal RTCP receiver report from ssrc.
func rtcpRR(ssrc uint32) []byte {
	b := []byte{0x80, 201, 0, 1, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[4:], ssrc)
	return b
}

func receivers(t *testing.T, n int) ([]*net.UDPConn, []netip.AddrPort) {
	conns := make([]*net.UDPConn, n)
	addrs := make([]netip.AddrPort, n)
	for i := range conns {
		conns[i] = testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
		_ = conns[i].SetReadBuffer(1 << 20)
		addrs[i] = conns[i].LocalAddr().(*net.UDPAddr).AddrPort()
	}
	return conns, addrs
}

// addStream adds the stream to e.Dst with n receivers and opens a socket
// to send it from.
func addStream(t *testing.T, e BehaviourEnv, n int) (StreamKey, []*net.UDPConn, []netip.AddrPort, *net.UDPConn) {
	t.Helper()
	conns, addrs := receivers(t, n)
	k := StreamKey{Dst: e.Dst}
	if err := e.Table.AddStream(Stream{Key: k, Receivers: addrs}); err != nil {
		t.Fatal(err)
	}
	return k, conns, addrs, testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
}

// send sends packets seq from..to-1 of ssrc from c to dst.
func send(t *testing.T, c *net.UDPConn, dst netip.AddrPort, ssrc uint32, from, to int) {
	t.Helper()
	for s := from; s < to; s++ {
		if _, err := c.WriteToUDPAddrPort(rtpPacket(ssrc, uint16(s)), dst); err != nil {
			t.Fatal(err)
		}
	}
}

// expect reads exactly the packets from..to-1 of ssrc at c, each once and
// intact, then checks that nothing more comes.
func expect(t *testing.T, c *net.UDPConn, from, to int, ssrc uint32, what string) {
	t.Helper()
	seen := map[uint16]bool{}
	buf := make([]byte, 2048)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for len(seen) < to-from {
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("%s: got %d of %d packets: %v", what, len(seen), to-from, err)
		}
		seq := binary.BigEndian.Uint16(buf[2:])
		if int(seq) < from || int(seq) >= to || seen[seq] {
			t.Fatalf("%s: unexpected or duplicate packet seq %d", what, seq)
		}
		if want := rtpPacket(ssrc, seq); string(buf[:n]) != string(want) {
			t.Fatalf("%s: packet %d differs from what was sent (%d bytes)", what, seq, n)
		}
		seen[seq] = true
	}
	testkit.Silent(t, c, what)
}

// RTPPacket and Expect, for the kernel path's lab test (package
// distribute_test): what it sends and how it checks what arrives.
var (
	RTPPacket = rtpPacket
	Expect    = expect
)

// The timeouts of the behaviour suite's servers.
const (
	BehaviourUnreachable = 300 * time.Millisecond
	BehaviourReap        = 50 * time.Millisecond
)

// Behaviour is the suite every data path passes.
var Behaviour = []struct {
	Name string
	Run  func(t *testing.T, e BehaviourEnv)
}{
	{"1to1", func(t *testing.T, e BehaviourEnv) { fanOut(t, e, 1) }},
	{"1to16", func(t *testing.T, e BehaviourEnv) { fanOut(t, e, 16) }},
	{"remove receiver stops at once", removeReceiver},
	{"remove stream stops at once", removeStream},
	{"SSRC demultiplexing", ssrcDemux},
	{"non-media and strangers dropped", strangers},
	{"unreachable receiver removed", unreachable},
}

func TestBehaviourUserspace(t *testing.T) {
	for _, c := range Behaviour {
		t.Run(c.Name, func(t *testing.T) { c.Run(t, userspaceEnv(t, nil)) })
	}
}

func fanOut(t *testing.T, e BehaviourEnv, n int) {
	const pkts = 50
	k, conns, addrs, sender := addStream(t, e, n)
	send(t, sender, e.Dst, 1234, 0, pkts)
	for i, c := range conns {
		expect(t, c, 0, pkts, 1234, addrs[i].String())
	}
	for _, a := range addrs {
		if got := receiverCount(e.Table, k, a); got != pkts {
			t.Errorf("receiver %v counter %d, want %d", a, got, pkts)
		}
	}
	if e.Kernel {
		if v := metricstest.Value(t, e.Reg, "traverse_distribute_packets_in_total"); v != 0 {
			t.Errorf("%v packets climbed to user space", v)
		}
	}
	st := e.Table.Streams()[0]
	if st.Packets != pkts || st.Bytes != pkts*200 || st.LastSeen.IsZero() {
		t.Errorf("stream counters %d packets %d bytes last %v, want %d, %d", st.Packets, st.Bytes, st.LastSeen, pkts, pkts*200)
	}
	if r := st.Receivers[0]; r.Bytes != pkts*200 || r.LastSent.IsZero() {
		t.Errorf("receiver counters %+v", r)
	}
}

func removeReceiver(t *testing.T, e BehaviourEnv) {
	k, conns, addrs, sender := addStream(t, e, 3)
	send(t, sender, e.Dst, 7, 0, 10)
	for i, c := range conns {
		expect(t, c, 0, 10, 7, addrs[i].String())
	}
	if err := e.Table.RemoveReceiver(k, addrs[1]); err != nil {
		t.Fatal(err)
	}
	send(t, sender, e.Dst, 7, 10, 20)
	expect(t, conns[0], 10, 20, 7, "kept receiver")
	expect(t, conns[2], 10, 20, 7, "kept receiver")
	testkit.Silent(t, conns[1], "removed receiver")
	if err := e.Table.RemoveReceiver(k, addrs[1]); !errors.Is(err, ErrNotFound) {
		t.Errorf("second removal: %v, want ErrNotFound", err)
	}
}

func removeStream(t *testing.T, e BehaviourEnv) {
	k, conns, _, sender := addStream(t, e, 2)
	send(t, sender, e.Dst, 7, 0, 5)
	expect(t, conns[0], 0, 5, 7, "receiver")
	expect(t, conns[1], 0, 5, 7, "receiver")
	if err := e.Table.RemoveStream(k); err != nil {
		t.Fatal(err)
	}
	send(t, sender, e.Dst, 7, 5, 10)
	testkit.WaitFor(t, 5*time.Second, "the dropped packets counted", func() bool {
		return metricstest.Value(t, e.Reg, "traverse_distribute_dropped_total", "reason", "no_stream") == 5
	})
	testkit.Silent(t, conns[0], "receiver of a removed stream")
	testkit.Silent(t, conns[1], "receiver of a removed stream")
}

func ssrcDemux(t *testing.T, e BehaviourEnv) {
	conns, addrs := receivers(t, 3)
	a := StreamKey{Dst: e.Dst, SSRC: 1, HasSSRC: true}
	b := StreamKey{Dst: e.Dst, SSRC: 2, HasSSRC: true}
	rest := StreamKey{Dst: e.Dst}
	for i, k := range []StreamKey{a, b, rest} {
		if err := e.Table.AddStream(Stream{Key: k, Receivers: addrs[i : i+1]}); err != nil {
			t.Fatal(err)
		}
	}
	sender := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	send(t, sender, e.Dst, 1, 0, 5)
	send(t, sender, e.Dst, 2, 0, 6)
	send(t, sender, e.Dst, 3, 0, 7)
	expect(t, conns[0], 0, 5, 1, "SSRC 1's receiver")
	expect(t, conns[1], 0, 6, 2, "SSRC 2's receiver")
	expect(t, conns[2], 0, 7, 3, "the port's receiver")
}

func strangers(t *testing.T, e BehaviourEnv) {
	conns, addrs := receivers(t, 1)
	sender := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	other := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.2:0"))
	k := StreamKey{Dst: e.Dst}
	if err := e.Table.AddStream(Stream{Key: k, Source: netip.MustParseAddr("127.0.0.1"), Receivers: addrs}); err != nil {
		t.Fatal(err)
	}
	for _, b := range [][]byte{[]byte("GET / HTTP/1.0\r\n\r\n"), {0x00, 0x01, 0, 8, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, {0x80, 96, 0, 1}} {
		if _, err := sender.WriteToUDPAddrPort(b, e.Dst); err != nil {
			t.Fatal(err)
		}
	}
	send(t, other, e.Dst, 9, 0, 4) // right port, wrong sender
	testkit.WaitFor(t, 5*time.Second, "the drops counted", func() bool {
		return metricstest.Value(t, e.Reg, "traverse_distribute_dropped_total", "reason", "not_media") == 3 &&
			metricstest.Value(t, e.Reg, "traverse_distribute_dropped_total", "reason", "source") == 4
	})
	testkit.Silent(t, conns[0], "receiver")
	send(t, sender, e.Dst, 9, 0, 3)
	expect(t, conns[0], 0, 3, 9, "receiver")
}
