package sipgw

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/pion/sdp/v3"

	"github.com/traverse-rtc/traverse/internal/mediaproxy"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

var clientIP = netip.MustParseAddr("127.0.0.3")

// TestLoad1000Calls holds 1,000 concurrent calls through the gateway (every
// fifth with video too, so 1,200 streams), while the process has exactly
// three sockets on the outside address: SIP, RTP, RTCP. Every stream sends
// packets tagged with its call and kind; every echo must come back to the
// right stream. A quarter of the calls declare no a=ssrc and all use the
// same SSRC (like SIPp): the latch and the source address keep them apart.
// It stays one function: its phases (set up, send, check, hang up) share
// the table of calls and read in order.
func TestLoad1000Calls(t *testing.T) {
	if testing.Short() {
		t.Skip("load test")
	}
	const calls, perStream = 1000, 5
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < 8000 {
		t.Skipf("needs about 4,000 file descriptors; RLIMIT_NOFILE is %d", lim.Cur)
	}
	start := time.Now()
	// Sockets of earlier tests in this process (a sipgo user agent's
	// wildcard transport closing late) are not the gateway's: count only
	// the outside sockets that appear from here on.
	outsideAddr := func(a netip.Addr) bool { return a == outsideIP || a.IsUnspecified() }
	before := map[netip.AddrPort]bool{}
	for _, ap := range processUDPSockets(t, outsideAddr) {
		before[ap] = true
	}
	uas := startUAS(t, insideIP)
	tg := startGateway(t, uas.addr.String(), func(c *Config, _ *mediaproxy.Config) {
		// One client address makes every call: a trunk, limited as one.
		c.RateLimit, c.RateBurst = 1e6, 1e6
		c.CallRate, c.CallBurst, c.SourceStreams = 1e6, 1e6, 2*calls
	})
	uac := startUAC(t, clientIP)

	type streamT struct {
		conn *net.UDPConn
		ssrc uint32
		tag  string
	}
	type callT struct {
		sess    *sipgo.DialogClientSession
		streams []*streamT
	}
	cs := make([]*callT, calls)
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(clientIP, 0)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	for i := range cs {
		c := &callT{}
		n := 1
		if i%5 == 0 {
			n = 2
		}
		for k := 0; k < n; k++ {
			s := &streamT{conn: listen(), tag: fmt.Sprintf("call%04d-kind%d", i, k)}
			s.ssrc = uint32(0x100000*(k+1) + i)
			if i%4 == 0 {
				s.ssrc = 0xC0FFEE + uint32(k) // undeclared and colliding
			}
			c.streams = append(c.streams, s)
		}
		cs[i] = c
	}
	addr := func(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }
	parallel := func(workers int, f func(i int) error) {
		t.Helper()
		var wg sync.WaitGroup
		var mu sync.Mutex
		var errs []string
		next := make(chan int)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					if err := f(i); err != nil {
						mu.Lock()
						errs = append(errs, fmt.Sprintf("call %d: %v", i, err))
						mu.Unlock()
					}
				}
			}()
		}
		for i := 0; i < calls; i++ {
			next <- i
		}
		close(next)
		wg.Wait()
		if len(errs) > 0 {
			sort.Strings(errs)
			t.Fatalf("%d failures, first: %s", len(errs), errs[0])
		}
	}

	// 1. Set up every call.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	parallel(32, func(i int) error {
		c := cs[i]
		var video netip.AddrPort
		var vssrc uint32
		if len(c.streams) > 1 {
			video = addr(c.streams[1].conn)
			if i%4 != 0 {
				vssrc = c.streams[1].ssrc
			}
		}
		assrc := c.streams[0].ssrc
		if i%4 == 0 {
			assrc = 0
		}
		s, err := uac.call(ctx, tg.gw.Addr(), offerSDP(addr(c.streams[0].conn), video, assrc, vssrc))
		if err != nil {
			return err
		}
		c.sess = s
		var ans sdp.SessionDescription
		if err := ans.Unmarshal(s.InviteResponse.Body()); err != nil {
			return err
		}
		for _, m := range ans.MediaDescriptions {
			if m.MediaName.Port.Value != int(tg.mp.RTPAddr().Port()) {
				return fmt.Errorf("answer port %d, want the fixed port", m.MediaName.Port.Value)
			}
		}
		return nil
	})
	setup := time.Since(start)
	if got := tg.gw.Calls(); got != calls {
		t.Fatalf("%d calls held, want %d", got, calls)
	}
	if got := tg.mp.Streams(); got != 1200 {
		t.Fatalf("%d streams, want 1200", got)
	}

	// 2. Exactly three outside sockets while 1,000 calls are up.
	var outside []netip.AddrPort
	for _, ap := range processUDPSockets(t, outsideAddr) {
		if !before[ap] {
			outside = append(outside, ap)
		}
	}
	want := []netip.AddrPort{tg.gw.Addr(), tg.mp.RTPAddr(), tg.mp.RTCPAddr()}
	sort.Slice(want, func(i, j int) bool { return want[i].Port() < want[j].Port() })
	if fmt.Sprint(outside) != fmt.Sprint(want) {
		t.Fatalf("outside UDP sockets of this process: %v, want exactly %v", outside, want)
	}
	inside := processUDPSockets(t, func(a netip.Addr) bool { return a == insideIP })

	// 3. Media: tagged packets out, echoes back to the right stream.
	fixed := tg.mp.RTPAddr()
	// Each worker has one packet in flight at a time: a burst of 6,000
	// datagrams at the fixed port would overflow socket buffers on a loaded
	// machine, and UDP may drop them; what is tested is demultiplexing.
	parallel(32, func(i int) error {
		buf := make([]byte, 2048)
		for _, s := range cs[i].streams {
			for q := 0; q < perStream; q++ {
				p := make([]byte, 12, 64)
				p[0] = 0x80
				binary.BigEndian.PutUint16(p[2:], uint16(q))
				binary.BigEndian.PutUint32(p[8:], s.ssrc)
				p = append(p, s.tag...)
				if _, err := s.conn.WriteToUDPAddrPort(p, fixed); err != nil {
					return err
				}
				_ = s.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
				n, from, err := s.conn.ReadFromUDPAddrPort(buf)
				if err != nil {
					return fmt.Errorf("%s: echo %d of %d: %w", s.tag, q, perStream, err)
				}
				if from != fixed || string(buf[12:n]) != s.tag {
					return fmt.Errorf("%s got %q from %v: misdelivered", s.tag, buf[12:n], from)
				}
			}
		}
		return nil
	})
	mc := tg.mp.Counters()
	testkit.WaitFor(t, 5*time.Second, "counters caught up", func() bool {
		return mc.RTPIn.Load() == 1200*perStream && mc.RTPOut.Load() == 1200*perStream
	})
	if mc.DropUnknownSSRC.Load() != 0 {
		t.Fatalf("%d packets with unknown SSRC", mc.DropUnknownSSRC.Load())
	}

	// 4. Hang up; nothing may remain.
	parallel(32, func(i int) error {
		defer cs[i].sess.Close()
		return cs[i].sess.Bye(ctx)
	})
	testkit.WaitFor(t, 10*time.Second, "every session released", func() bool {
		return tg.gw.Calls() == 0 && tg.mp.Streams() == 0 && tg.mp.PortsInUse() == 0
	})
	t.Logf("%d calls (%d streams) set up in %v; outside sockets %v; inside sockets %d; %d RTP packets each way, all to the right call; total %v",
		calls, 1200, setup.Round(time.Millisecond), outside, len(inside), mc.RTPIn.Load(), time.Since(start).Round(time.Millisecond))
}

// processUDPSockets lists the local addresses of this process's UDP
// sockets whose address keep accepts, sorted by port, from /proc/net/udp
// and the process's socket inodes.
func processUDPSockets(t *testing.T, keep func(netip.Addr) bool) []netip.AddrPort {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc")
	}
	mine := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			mine[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	var out []netip.AddrPort
	for _, f := range []string{"/proc/self/net/udp", "/proc/self/net/udp6"} {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		sc.Scan()
		for sc.Scan() {
			fl := strings.Fields(sc.Text())
			if len(fl) < 10 || !mine[fl[9]] {
				continue
			}
			ap, ok := parseProcAddr(fl[1])
			if ok && keep(ap.Addr()) {
				out = append(out, ap)
			}
		}
		fh.Close()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Port() < out[j].Port() })
	return out
}

// parseProcAddr decodes "0100007F:1F90" (the address in host byte order,
// little-endian here, 32 bits at a time).
func parseProcAddr(s string) (netip.AddrPort, bool) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, false
	}
	b, err := hex.DecodeString(h)
	port, err2 := strconv.ParseUint(p, 16, 16)
	if err != nil || err2 != nil || (len(b) != 4 && len(b) != 16) {
		return netip.AddrPort{}, false
	}
	for i := 0; i+4 <= len(b); i += 4 {
		b[i], b[i+1], b[i+2], b[i+3] = b[i+3], b[i+2], b[i+1], b[i]
	}
	a, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(a.Unmap(), uint16(port)), true
}
