package turn

import (
	"bufio"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/traverse-rtc/traverse/internal/netlab"
	"github.com/traverse-rtc/traverse/internal/turn/turntest"
)

// TestOwnHostRefused mounts issue 10's item 4 in a lab: a TURN server on a
// public address (203.0.113.0/24, which the default filter allows), with
// a UDP and a TCP service bound on that same address and a UDP and a TCP
// service on 0.0.0.0 in its namespace. A client on another host allocates
// and tries to reach them through the relay: ChannelBind and Connect get
// 403, Send indications are dropped, and no service receives a byte. Two
// allocations of the server still reach each other relay to relay, over
// UDP (data delivered) and TCP (Connect succeeds). Before the fix, the
// relay IP was exempt from the filter at every port.
func TestOwnHostRefused(t *testing.T) {
	lab := netlab.New(t)
	srvHost := lab.Host("turn", lab.Internet())
	cliHost := lab.Host("client", lab.Internet())
	if err := lab.Err(); err != nil {
		t.Fatal(err)
	}
	srvIP := srvHost.Addr()

	// The services an attacker wants to reach, counting what they get.
	var got atomic.Int64
	udpService := func(bind netip.AddrPort) uint16 {
		c, err := srvHost.ListenUDP(bind)
		if err != nil {
			t.Fatal(err)
		}
		turntest.ServeUDP(t, c, func(p []byte, _ netip.AddrPort) { got.Add(int64(len(p))) })
		return uint16(c.LocalAddr().(*net.UDPAddr).Port)
	}
	tcpService := func(bind string) uint16 {
		ln, err := srvHost.Listen("tcp4", bind)
		if err != nil {
			t.Fatal(err)
		}
		turntest.ServeTCP(t, ln, func(c net.Conn) { got.Add(1); c.Close() })
		return uint16(ln.Addr().(*net.TCPAddr).Port)
	}
	udpOwn := netip.AddrPortFrom(srvIP, udpService(netip.AddrPortFrom(srvIP, 0)))
	udpAny := netip.AddrPortFrom(srvIP, udpService(netip.AddrPort{}))
	tcpOwn := netip.AddrPortFrom(srvIP, tcpService(netip.AddrPortFrom(srvIP, 0).String()))
	tcpAny := netip.AddrPortFrom(srvIP, tcpService("0.0.0.0:0"))

	// The server runs in its host's namespace: this test binary again,
	// under nsenter, as TestHelperLabServer.
	listen := netip.AddrPortFrom(srvIP, 3478)
	cmd := srvHost.Command(os.Args[0], "-test.run=^TestHelperLabServer$")
	cmd.Env = append(os.Environ(), "TRAVERSE_TURN_LAB_LISTEN="+listen.String())
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); _ = cmd.Wait() })
	waitReady(t, stdout)

	udpClient := func() *stunClient {
		c, err := cliHost.ListenUDP(netip.AddrPort{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return &stunClient{t: t, c: c, server: listen, user: testUser, pass: testPass}
	}
	tcpClient := func() *stunClient {
		conn, err := cliHost.Dial("tcp4", listen.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return &stunClient{t: t, tcp: conn, server: listen, user: testUser, pass: testPass}
	}

	a, b := udpClient(), udpClient()
	ra, rb := a.allocate(), b.allocate()
	// The relay IP may be permitted (relay to relay needs it) ...
	if code := errCode(a.do(stun.MethodCreatePermission, peerAttr(udpOwn))); code != 0 {
		t.Fatalf("CreatePermission for the relay IP: %d", code)
	}
	// ... but no port of it that is not a relayed address.
	for i, p := range []netip.AddrPort{udpOwn, udpAny, tcpOwn, listen} {
		if code := errCode(a.do(stun.MethodChannelBind, channelAttr(0x4000+uint16(i)), peerAttr(p))); code != 403 {
			t.Errorf("ChannelBind to own %s: code %d, want 403", p, code)
		}
		send := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodSend, stun.ClassIndication),
			peerAttr(p), rawAttr{stun.AttrData, []byte("attack")})
		if _, err := a.c.WriteToUDPAddrPort(send.Raw, listen); err != nil {
			t.Fatal(err)
		}
	}

	// Relay to relay works: b permits a's relayed address, a binds a
	// channel to b's and sends; b receives it as a Data indication.
	if code := errCode(b.do(stun.MethodCreatePermission, peerAttr(ra))); code != 0 {
		t.Fatalf("b: CreatePermission %s: %d", ra, code)
	}
	if code := errCode(a.do(stun.MethodChannelBind, channelAttr(0x4010), peerAttr(rb))); code != 0 {
		t.Fatalf("a: ChannelBind to relayed %s: %d", rb, code)
	}
	frame := []byte{0x40, 0x10, 0, 5, 'h', 'e', 'l', 'l', 'o', 0, 0, 0}
	if _, err := a.c.WriteToUDPAddrPort(frame, listen); err != nil {
		t.Fatal(err)
	}
	if !receiveData(t, b, "hello") {
		t.Fatal("relay to relay: nothing arrived")
	}

	// TCP allocations (RFC 6062): Connect to a service on the relay IP
	// is 403; Connect to another TCP allocation's relayed address works.
	c, d := tcpClient(), tcpClient()
	allocateTCPRelayOver(t, c)
	_, rd := allocateTCPRelayOver(t, d)
	if code := errCode(c.do(stun.MethodCreatePermission, peerAttr(tcpOwn))); code != 0 {
		t.Fatalf("TCP: CreatePermission for the relay IP: %d", code)
	}
	for _, p := range []netip.AddrPort{tcpOwn, tcpAny} {
		if code := errCode(c.do(stun.MethodConnect, peerAttr(p))); code != 403 {
			t.Errorf("Connect to own %s: code %d, want 403", p, code)
		}
	}
	if code := errCode(c.do(stun.MethodConnect, peerAttr(rd))); code != 0 {
		t.Errorf("Connect to relayed %s: code %d, want success", rd, code)
	}

	// The attack's datagrams went out before the good frame on the same
	// path; the Connects were answered. Nothing reached a service.
	if n := got.Load(); n != 0 {
		t.Errorf("services on the relay host received %d bytes or connections", n)
	}
}

// receiveData waits for a Data indication carrying want on c.
func receiveData(t *testing.T, c *stunClient, want string) bool {
	buf := make([]byte, 2048)
	deadline := time.Now().Add(3 * time.Second)
	for {
		_ = c.c.SetReadDeadline(deadline)
		n, _, err := c.c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return false
		}
		m := &stun.Message{Raw: buf[:n]}
		if m.Decode() != nil || m.Type.Method != stun.MethodData {
			continue
		}
		if v, err := m.Get(stun.AttrData); err == nil && string(v) == want {
			return true
		}
	}
}

func waitReady(t *testing.T, stdout interface{ Read([]byte) (int, error) }) {
	t.Helper()
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "ready") {
				ready <- sc.Text()
			}
		}
		close(ready)
	}()
	select {
	case l, ok := <-ready:
		if !ok {
			t.Fatal("lab server exited before it was ready")
		}
		_ = l
	case <-time.After(20 * time.Second):
		t.Fatal("lab server not ready in 20 s")
	}
}

// TestHelperLabServer is TestOwnHostRefused's server process, run inside
// the server host's namespace.
func TestHelperLabServer(t *testing.T) {
	listen := os.Getenv("TRAVERSE_TURN_LAB_LISTEN")
	if listen == "" {
		t.Skip("helper process")
	}
	runServer(t, Config{Listen: netip.MustParseAddrPort(listen), Realm: testRealm,
		Users: map[string]string{testUser: testPass}, RelayPortLow: 50000, RelayPortHigh: 50999})
	os.Stdout.WriteString("ready\n")
	// Serve until the parent closes stdin.
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
}
