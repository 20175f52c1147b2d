package sipgw

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/emiago/sipgo"

	"github.com/traverse-rtc/traverse/internal/addrpolicy"
	"github.com/traverse-rtc/traverse/internal/mediaproxy"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

var (
	outsideIP = netip.MustParseAddr("127.0.0.1")
	insideIP  = netip.MustParseAddr("127.0.0.2")
)

// freePort returns a UDP port free on ip now.
func freePort(t *testing.T, ip netip.Addr) int {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// freeRange returns n consecutive ports whose first is free; the pool
// skips any taken later.
func freeRange(t *testing.T, n int) mediaproxy.PortRange {
	p := freePort(t, insideIP)
	if p+n > 65000 {
		p = 20000
	}
	return mediaproxy.PortRange{Low: uint16(p), High: uint16(p + n)}
}

type testGW struct {
	gw *Gateway
	mp *mediaproxy.Proxy
}

func startGateway(t *testing.T, upstream string, mod func(*Config, *mediaproxy.Config)) *testGW {
	t.Helper()
	tg := newGateway(t, upstream, mod)
	tg.run(t)
	return tg
}

// newGateway binds a gateway (mod as for startGateway) without serving it;
// run serves it until the test ends.
func newGateway(t *testing.T, upstream string, mod func(*Config, *mediaproxy.Config)) *testGW {
	t.Helper()
	mcfg := mediaproxy.Config{
		RTP: netip.AddrPortFrom(outsideIP, 0), RTCP: netip.AddrPortFrom(outsideIP, 0),
		InsideIP: insideIP, InsidePorts: freeRange(t, 5000),
		// Every party of these tests is on loopback, which the default
		// destination policy refuses.
		Policy: addrpolicy.Filter{Loopback: true},
	}
	cfg := Config{SIP: netip.MustParseAddrPort("127.0.0.1:0"), Upstream: netip.MustParseAddrPort(upstream)}
	if mod != nil {
		mod(&cfg, &mcfg)
	}
	tg := &testGW{}
	mp, err := mediaproxy.New(mcfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Media = mp
	gw, err := New(cfg)
	if err != nil {
		mp.Close()
		t.Fatal(err)
	}
	tg.gw, tg.mp = gw, mp
	t.Cleanup(func() {
		gw.Close()
		mp.Close()
	})
	return tg
}

func (tg *testGW) run(t *testing.T) { testkit.Run(t, tg.gw.Run) }

// waitBound waits until some process has bound the UDP address (SIPp has
// no readiness signal).
func waitBound(t *testing.T, ap netip.AddrPort) {
	t.Helper()
	testkit.WaitFor(t, 10*time.Second, "SIPp listening on "+ap.String(), func() bool {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
}

// sipp runs SIPp with args in dir and returns a wait function reporting
// its exit; the process is killed at cleanup if still running.
func sipp(t *testing.T, dir string, args ...string) func() error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	cmd := exec.CommandContext(ctx, "sipp", append(args, "-nostdin", "-timeout", "60s", "-timeout_error")...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var result error
	waited := false
	wait := func() error {
		if !waited {
			result, waited = <-done, true
			if result != nil {
				t.Logf("sipp %v: %v\n%s", args, result, lastLines(out.String(), 40))
			}
		}
		return result
	}
	t.Cleanup(func() {
		if !waited {
			_ = cmd.Process.Kill()
			wait()
		}
		cancel()
	})
	return wait
}

func lastLines(s string, n int) string {
	lines := bytes.Split([]byte(s), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

func needSIPp(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("sipp"); err != nil {
		t.Skip("sipp (Debian sip-tester) not installed")
	}
	if _, err := os.Stat("/usr/share/sip-tester/g711a.pcap"); err != nil {
		t.Skip("sip-tester pcaps not installed")
	}
	dir := t.TempDir()
	if err := os.Symlink("/usr/share/sip-tester", filepath.Join(dir, "pcap")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// pcapPackets counts the records of a classic pcap file.
func pcapPackets(t *testing.T, path string) uint64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 24 {
		t.Fatal("short pcap")
	}
	bo := binary.ByteOrder(binary.LittleEndian)
	if binary.BigEndian.Uint32(b) == 0xa1b2c3d4 || binary.BigEndian.Uint32(b) == 0xa1b23c4d {
		bo = binary.BigEndian
	}
	var n uint64
	for off := 24; off+16 <= len(b); n++ {
		off += 16 + int(bo.Uint32(b[off+8:]))
	}
	return n
}

func itoa(i int) string { return strconv.Itoa(i) }

// startTrio starts the cast of most call tests: an inside server, the
// gateway in front of it (mod as for startGateway) and an outside client.
func startTrio(t *testing.T, mod func(*Config, *mediaproxy.Config)) (*goUAS, *testGW, *goUAC) {
	t.Helper()
	uas := startUAS(t, insideIP)
	return uas, startGateway(t, uas.addr.String(), mod), startUAC(t, clientIP)
}

// callCtx bounds a test's SIP exchanges to 10 s.
// callFrom places a call from uac through the gateway, its audio on a new
// socket at clientIP with SSRC ssrc declared (0: none), hung up when the
// test ends. It returns the dialog and the media socket.
func callFrom(t *testing.T, tg *testGW, uac *goUAC, ssrc uint32) (*sipgo.DialogClientSession, *net.UDPConn) {
	t.Helper()
	m := udpOn(t, clientIP)
	s, err := uac.call(callCtx(t), tg.gw.Addr(), offerSDP(m.LocalAddr().(*net.UDPAddr).AddrPort(), netip.AddrPort{}, ssrc, 0))
	if err != nil {
		t.Fatalf("call: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, m
}

func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}
