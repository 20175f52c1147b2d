//go:build linux

package kfasttest

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/traverse-rtc/traverse/internal/kfast"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// Passes runs the frames every program must hand on untouched: mutations
// of hit (a frame the program rewrites, its flow installed) that make it
// another flow's, not UDP over IPv4, a fragment, malformed or truncated.
// Each must return TC_ACT_UNSPEC, come out byte for byte unchanged, and
// leave the counters (counted reads the hit flow's packets) as they were.
func Passes(t *testing.T, prog *ebpf.Program, hit Packet, counted func(testing.TB) uint64) {
	t.Helper()
	passes(t, prog, hit, counted, true)
}

// PassesTo is Passes for a program keyed by the destination only (a
// server's address: any source port is served), without the case of
// another source port.
func PassesTo(t *testing.T, prog *ebpf.Program, hit Packet, counted func(testing.TB) uint64) {
	t.Helper()
	passes(t, prog, hit, counted, false)
}

func passes(t *testing.T, prog *ebpf.Program, hit Packet, counted func(testing.TB) uint64, bySource bool) {
	t.Helper()
	other := func(ap netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(ap.Addr(), ap.Port()+1) }
	with := func(f func(*Packet)) Packet {
		p := hit
		f(&p)
		return p
	}
	cases := []struct {
		name string
		p    Packet
	}{
		{"map miss: other source port", with(func(p *Packet) { p.Src = other(p.Src) })},
		{"map miss: other destination port", with(func(p *Packet) { p.Dst = other(p.Dst) })},
		{"map miss: source and destination swapped", with(func(p *Packet) { p.Src, p.Dst = p.Dst, p.Src })},
		{"TCP", with(func(p *Packet) { p.Proto = 6 })},
		{"ICMP", with(func(p *Packet) { p.Proto = 1 })},
		{"first fragment (MF)", with(func(p *Packet) { p.FragOff = 0x2000 })},
		{"later fragment (offset)", with(func(p *Packet) { p.FragOff = 0x0010 })},
		{"IP options", with(func(p *Packet) { p.IHL = 6 })},
		{"IPv6 ethertype", with(func(p *Packet) { p.EthType = 0x86dd })},
		{"ARP ethertype", with(func(p *Packet) { p.EthType = 0x0806 })},
		{"truncated inside the UDP header", with(func(p *Packet) { p.Truncate = 4 + len(p.Payload) })},
		{"truncated after the IP header", with(func(p *Packet) { p.Truncate = 8 + len(p.Payload) })},
		{"truncated payload (IP length beyond the packet)", with(func(p *Packet) { p.Truncate = 10 })},
		{"IP length shorter than the headers", with(func(p *Packet) { p.TotLenAdd = -(len(p.Payload) + 20) })},
		{"UDP length shorter than the IP length", with(func(p *Packet) { p.UDPLenAdd = -4 })},
		{"UDP length longer than the IP length", with(func(p *Packet) { p.UDPLenAdd = 2 })},
		// (BPF_PROG_TEST_RUN itself refuses an IPv4 ethertype without a
		// full IP header, so the shortest frame carries another type.)
		{"Ethernet header only", with(func(p *Packet) { p.EthType, p.Truncate = 0x88b5, 28+len(p.Payload) })},
	}
	if !bySource {
		cases = cases[1:]
	}
	if len(hit.Payload) < 10 {
		t.Fatalf("Passes needs a hit frame with at least 10 bytes of payload")
	}
	before := counted(t)
	for _, tc := range cases {
		t.Run("pass: "+tc.name, func(t *testing.T) {
			in := tc.p.Bytes()
			ret, out := Run(t, prog, in)
			if ret != ActUnspec {
				t.Fatalf("returned %d, want TC_ACT_UNSPEC (pass)", int32(ret))
			}
			if !bytes.Equal(out, in) {
				t.Errorf("packet changed:\n got %x\nwant %x", out, in)
			}
		})
	}
	if after := counted(t); after != before {
		t.Errorf("passed packets counted: %d -> %d", before, after)
	}
}

// Rewrite is what a program must make of a frame it carries.
type Rewrite struct {
	In       []byte
	Ret      uint32 // ActRedirect, or ActOK for up the stack
	Src, Dst netip.AddrPort
	Payload  []byte // the UDP payload that must come out
	ZeroCsum bool   // the sender sent no UDP checksum: it must stay 0
	// TTL the rewritten frame must carry (0: the input's minus one).
	TTL byte
	// Eth is the Ethernet destination and source (12 bytes) the frame must
	// leave with; nil: the input's (bpf_redirect_neigh fills them in later).
	Eth []byte
}

// CheckRewrite runs r.In through prog and checks the frame that comes
// out: the action, the lengths, the addresses and ports, the TTL, both
// checksums against a recomputation from scratch (or a zero UDP checksum
// kept), the Ethernet addresses and the payload.
func CheckRewrite(t *testing.T, prog *ebpf.Program, r Rewrite) {
	t.Helper()
	ret, out := Run(t, prog, r.In)
	if ret != r.Ret {
		t.Fatalf("returned %d, want %d", int32(ret), int32(r.Ret))
	}
	if want := 42 + len(r.Payload); len(out) != want {
		t.Fatalf("frame of %d bytes, want %d", len(out), want)
	}
	CheckHeaders(t, out, r.Src, r.Dst, r.ZeroCsum)
	ip, udp := out[14:34], out[34:]
	if got := int(binary.BigEndian.Uint16(ip[2:])); got != 28+len(r.Payload) {
		t.Errorf("IP total length %d, want %d", got, 28+len(r.Payload))
	}
	if got := int(binary.BigEndian.Uint16(udp[4:])); got != 8+len(r.Payload) {
		t.Errorf("UDP length %d, want %d", got, 8+len(r.Payload))
	}
	ttl := r.TTL
	if ttl == 0 {
		ttl = r.In[14+8] - 1
	}
	if ip[8] != ttl {
		t.Errorf("TTL %d, want %d", ip[8], ttl)
	}
	if r.Eth == nil && !bytes.Equal(out[:12], r.In[:12]) {
		t.Errorf("Ethernet addresses changed before the redirect")
	}
	if r.Eth != nil && !bytes.Equal(out[:12], r.Eth) {
		t.Errorf("Ethernet addresses %x, want %x", out[:12], r.Eth)
	}
	if !bytes.Equal(udp[8:], r.Payload) {
		t.Errorf("payload\n got %x\nwant %x", udp[8:], r.Payload)
	}
}

// Path is one offloader carrying one flow across the Lab, driven through
// its user-space owner (the media proxy, the TURN server).
type Path interface {
	// RoundTrip sends one packet from the flow's client and waits for its
	// echo, failing the test when it does not come back.
	RoundTrip(t *testing.T)
	// UserSpace is the number of packets user space forwarded, both
	// directions; Kernel the number the offloader counted (both as the
	// owner reads them: they may lag).
	UserSpace(t *testing.T) uint64
	Kernel(t *testing.T) uint64
	// HandBack takes the flow out of the kernel; user space still holds
	// it and must carry it on.
	HandBack(t *testing.T)
}

// LabSuite is the conformance suite of an offloader in the lab: with the
// flow offloaded (the caller waited for it), n round trips are all carried
// by the kernel (user space forwards none, the kernel counts exactly 2n);
// after HandBack, user space carries every packet of 20 more round trips
// and the kernel none. quiet is how long the counters must stay unchanged
// to be read as settled (longer than the owner's reading period).
func LabSuite(t *testing.T, p Path, n int, quiet time.Duration) {
	t.Helper()
	type counts struct{ user, kernel uint64 }
	settle := func() counts {
		t.Helper()
		last, since := counts{p.UserSpace(t), p.Kernel(t)}, time.Now()
		testkit.WaitFor(t, 30*time.Second, "the counters to settle", func() bool {
			if c := (counts{p.UserSpace(t), p.Kernel(t)}); c != last {
				last, since = c, time.Now()
				return false
			}
			return time.Since(since) >= quiet
		})
		return last
	}
	m0 := settle()
	for range n {
		p.RoundTrip(t)
	}
	m1 := settle()
	if d := m1.user - m0.user; d != 0 {
		t.Errorf("user space forwarded %d packets after the offload", d)
	}
	if d := m1.kernel - m0.kernel; d != uint64(2*n) {
		t.Errorf("kernel counted %d packets, want %d", d, 2*n)
	}
	p.HandBack(t)
	const m = 20
	for range m {
		p.RoundTrip(t)
	}
	m2 := settle()
	if d := m2.user - m1.user; d != 2*m {
		t.Errorf("user space forwarded %d packets after the hand-back, want %d", d, 2*m)
	}
	if d := m2.kernel - m1.kernel; d != 0 {
		t.Errorf("kernel counted %d packets after the hand-back", d)
	}
}

// CheckCounts checks that the loader's counter slot holds packets and
// bytes; what names the slot in the failure.
func CheckCounts(t *testing.T, l *kfast.Loader, slot uint32, what string, packets, bytes uint64) {
	t.Helper()
	c, err := l.Read(slot)
	if err != nil {
		t.Fatal(err)
	}
	if c.Packets != packets || c.Bytes != bytes {
		t.Errorf("%s counted %d packets %d bytes, want %d and %d", what, c.Packets, c.Bytes, packets, bytes)
	}
}

// Random runs check for n cases drawn from one random source, seeded the
// same on every run; check returns a description of its case, reported
// when the case failed (the run stops there).
func Random(t *testing.T, n int, check func(r *rand.Rand, i int) string) {
	t.Helper()
	r := rand.New(rand.NewPCG(1, 2))
	for i := range n {
		what := check(r, i)
		if t.Failed() {
			t.Fatalf("case %d: %s", i, what)
		}
	}
}
