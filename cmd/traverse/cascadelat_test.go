package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/traverse-rtc/traverse/bench/ngclient"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// The latency phase of TestCascadeHopCost: what one relay hop adds on
// loopback. Node A sends, for each sample, one relay message through the
// node to the latency receiver L and, right after, one datagram straight
// to the direct receiver D; each carries A's clock at its send and the
// sample's index. Both receivers take the kernel's time of arrival at
// their socket (SO_TIMESTAMPNS), so the figures do not include the test
// process's own wake-up to read them: hop = A's send -> arrival at L
// (the node's wake-up, its handling and send, two loopback trips),
// direct = A's send -> arrival at D (one loopback trip and A's send);
// added = hop - direct, at each quantile and per sample (the two sent a
// few microseconds apart see the same machine). The read times in user
// space (the old figure, which includes the receivers' wake-up) are
// reported beside them.

// latSamples holds one path's times by sample index (0: not received).
type latSamples struct {
	mu           sync.Mutex
	kernel, user []time.Duration
}

func newLatSamples(n int) *latSamples {
	return &latSamples{kernel: make([]time.Duration, n), user: make([]time.Duration, n)}
}

// put records sample idx: sent at A's clock sent, arrived at kt (the
// kernel's stamp), read at ut.
func (s *latSamples) put(idx uint32, sent int64, kt, ut time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if int(idx) >= len(s.kernel) || sent <= 0 {
		return
	}
	if !kt.IsZero() {
		s.kernel[idx] = time.Duration(kt.UnixNano() - sent)
	}
	s.user[idx] = time.Duration(ut.UnixNano() - sent)
}

// listenStamped opens a loopback UDP socket whose reads carry the kernel's
// receive time (readStamped).
func listenStamped(t *testing.T) *net.UDPConn {
	c := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return c
}

// readStamped reads one datagram into b and returns its size, the time
// the kernel received it (zero when the socket gave none) and the time
// the read returned.
func readStamped(c *net.UDPConn, b, oob []byte) (n int, kt, ut time.Time, err error) {
	n, oobn, _, _, err := c.ReadMsgUDPAddrPort(b, oob)
	ut = time.Now()
	if err != nil {
		return 0, kt, ut, err
	}
	cm, _ := unix.ParseSocketControlMessage(oob[:oobn])
	for _, m := range cm {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= 16 {
			kt = time.Unix(int64(binary.NativeEndian.Uint64(m.Data)), int64(binary.NativeEndian.Uint64(m.Data[8:])))
		}
	}
	return n, kt, ut, nil
}

// recvStamped records into got, until c is closed, the samples c
// receives: A's clock (8 bytes) and the sample's index (4) at offset at
// of each datagram, its kernel arrival stamp and read time. seen, when
// not nil, is set at the first datagram.
func recvStamped(c *net.UDPConn, at int, got *latSamples, seen *atomic.Bool) {
	buf, oob := make([]byte, 2048), make([]byte, 128)
	for {
		k, kt, ut, err := readStamped(c, buf, oob)
		if err != nil {
			return
		}
		if seen != nil {
			seen.Store(true)
		}
		if k >= at+12 {
			got.put(binary.BigEndian.Uint32(buf[at+8:]), int64(binary.BigEndian.Uint64(buf[at:])), kt, ut)
		}
	}
}

// loadAvg is /proc/loadavg's first three fields.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// quantiles are the latency figures of one set of samples.
type quantiles struct{ p50, p99, p999 time.Duration }

func quantilesOf(v []time.Duration) quantiles {
	s := slices.Clone(v)
	slices.Sort(s)
	at := func(p float64) time.Duration { return s[min(len(s)-1, int(float64(len(s))*p))] }
	return quantiles{at(0.5), at(0.99), at(0.999)}
}

func (q quantiles) String() string {
	us := func(d time.Duration) string { return fmt.Sprintf("%.0f", float64(d)/1e3) }
	return fmt.Sprintf("p50 %s p99 %s p999 %s us", us(q.p50), us(q.p99), us(q.p999))
}

func (q quantiles) minus(r quantiles) quantiles {
	return quantiles{q.p50 - r.p50, q.p99 - r.p99, q.p999 - r.p999}
}

// latReport is the phase's figures: the samples both paths delivered,
// hop, direct and added, from the kernel's arrival stamps and from the
// reads, and the added latency (at each quantile); an error when fewer
// than min of them are complete. Only the slots hop holds count, so that
// several paths (the hop and the peers, latPath) can share dir.
func latReport(hop, dir *latSamples, minSamples int) (string, quantiles, error) {
	hop.mu.Lock()
	defer hop.mu.Unlock()
	dir.mu.Lock()
	defer dir.mu.Unlock()
	var hk, dk, hu, du, paired []time.Duration
	for i := range hop.kernel {
		if hop.kernel[i] == 0 || dir.kernel[i] == 0 {
			continue
		}
		hk, dk = append(hk, hop.kernel[i]), append(dk, dir.kernel[i])
		hu, du = append(hu, hop.user[i]), append(du, dir.user[i])
		paired = append(paired, hop.kernel[i]-dir.kernel[i])
	}
	if len(hk) < minSamples || len(hk) == 0 {
		return "", quantiles{}, fmt.Errorf("latency: %d samples stamped on both paths of %d sent, want %d", len(hk), len(hop.kernel), minSamples)
	}
	qh, qd := quantilesOf(hk), quantilesOf(dk)
	uh, ud := quantilesOf(hu), quantilesOf(du)
	return fmt.Sprintf("%d samples; kernel arrival: hop %v; direct %v; added %v (per sample: %v); "+
		"read in user space: hop %v, direct %v, added %v",
		len(hk), qh, qd, qh.minus(qd), quantilesOf(paired), uh, ud, uh.minus(ud)), qh.minus(qd), nil
}

// The peers measured beside the hop in the same run (BENCH_LAT_PEERS,
// bench/hop-latency-vs-peers.sh): the same samples, sent the same way and
// stamped by the same receivers, through
//   - udpfwd: bench/udpfwd (BENCH_UDPFWD, its binary), a plain batched Go
//     UDP forwarder (recvmmsg/sendmmsg through internal/udpio, no crypto):
//     A and L are the two members of one of its rooms;
//   - rtpengine: rtpengine (user space, --table=-1) forwarding one call's
//     RTP from A (the offerer) to L (the answerer), set up over ng
//     (bench/ngclient).
// Each peer's datagram is an RTP packet (version 2, PCMU) as long as the
// hop's relay frame, A's clock and the sample's index after its header.

// latPath is one way through to a receiver: send sends sample idx.
type latPath struct {
	name string
	send func(idx uint32)
	got  *latSamples
}

// latPeerNames reads BENCH_LAT_PEERS, a comma-separated list of udpfwd
// and rtpengine.
func latPeerNames(t *testing.T) []string {
	var names []string
	for n := range strings.SplitSeq(os.Getenv("BENCH_LAT_PEERS"), ",") {
		switch n = strings.TrimSpace(n); n {
		case "":
		case "udpfwd", "rtpengine":
			names = append(names, n)
		default:
			t.Fatalf("BENCH_LAT_PEERS: unknown peer %q (udpfwd, rtpengine)", n)
		}
	}
	return names
}

// rtpStamp is where a peer's datagram carries A's clock (8 bytes) and the
// sample's index (4): after the RTP header.
const rtpStamp = 12

// startLatPeer starts the peer name, a forwarder from a sender of its own
// to a stamped receiver, and returns its path: datagrams of size bytes,
// samples recorded into total slots.
func startLatPeer(t *testing.T, name string, size, total int) latPath {
	a := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	l := listenStamped(t)
	lAddr := l.LocalAddr().(*net.UDPAddr).AddrPort()
	got := newLatSamples(total)
	var seen atomic.Bool // L received something (the set-up's probes)
	go recvStamped(l, rtpStamp, got, &seen)
	pkt := make([]byte, max(size, rtpStamp+12))
	pkt[0], pkt[1] = 0x80, 0 // RTP version 2, PCMU
	binary.BigEndian.PutUint32(pkt[8:], 0x5eed)
	var seq uint16
	var to netip.AddrPort
	send := func(idx uint32) {
		seq++
		binary.BigEndian.PutUint16(pkt[2:], seq)
		binary.BigEndian.PutUint32(pkt[4:], uint32(seq)*160)
		binary.BigEndian.PutUint64(pkt[rtpStamp:], uint64(time.Now().UnixNano()))
		binary.BigEndian.PutUint32(pkt[rtpStamp+8:], idx)
		_, _ = a.WriteToUDPAddrPort(pkt, to)
	}
	switch name {
	case "udpfwd":
		bin := os.Getenv("BENCH_UDPFWD")
		if bin == "" {
			t.Fatal("BENCH_UDPFWD: the udpfwd binary (go build -o FILE ./bench/udpfwd) is needed for the udpfwd peer")
		}
		to = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(testkit.FreePorts(t, 1)))
		startProgram(t, "udpfwd", nil, bin, "-mode", "server", "-listen", to.String())
		// a member's first datagram names its room (two bytes): L's hello
		// and A's first packet both name room 0x8000 (an RTP packet's
		// first bytes), so that whichever datagram is lost while udpfwd
		// starts, the next one registers its sender
		testkit.WaitFor(t, 15*time.Second, "udpfwd forwarding A's packets to L", func() bool {
			_, _ = l.WriteToUDPAddrPort(pkt[:2], to)
			send(^uint32(0))
			return testkit.Eventually(100*time.Millisecond, seen.Load)
		})
	case "rtpengine":
		base := testkit.FreePorts(t, 12)
		ng := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(base))
		minPort := (base + 2) &^ 1 // RTP on an even port, RTCP on the next
		startProgram(t, "rtpengine", nil, "rtpengine", "--config-file=none", "--table=-1", "--interface=127.0.0.1",
			"--listen-ng="+ng.String(), "--foreground", "--log-stderr", "--log-level=4",
			fmt.Sprintf("--port-min=%d", minPort), fmt.Sprintf("--port-max=%d", base+11), "--delete-delay=0")
		c, err := ngclient.Dial(ng)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Delete("latency"); c.Close() })
		testkit.WaitFor(t, 15*time.Second, "rtpengine answering ng pings", c.Ping)
		if to, _, err = c.Call("latency", a.LocalAddr().(*net.UDPAddr).AddrPort(), lAddr); err != nil {
			t.Fatal(err)
		}
		testkit.WaitFor(t, 15*time.Second, "rtpengine forwarding A's RTP to L", func() bool {
			send(^uint32(0))
			return testkit.Eventually(100*time.Millisecond, seen.Load)
		})
	}
	return latPath{name: name, send: send, got: got}
}
