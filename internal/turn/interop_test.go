package turn

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"
)

// freeUDPPort returns a loopback UDP port that was free a moment ago.
func freeUDPPort(t testing.TB) int {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// startTurnutilsPeer runs coturn's UDP echo peer on a free port.
func startTurnutilsPeer(t testing.TB) int {
	t.Helper()
	bin, err := exec.LookPath("turnutils_peer")
	if err != nil {
		t.Skip("turnutils_peer not installed (package coturn)")
	}
	port := freeUDPPort(t)
	cmd := exec.Command(bin, "-L", "127.0.0.1", "-p", strconv.Itoa(port))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return port
}

var (
	reLost = regexp.MustCompile(`Total lost packets (\d+)`)
	reRecv = regexp.MustCompile(`tot_send_msgs=(\d+), tot_recv_msgs=(\d+)`)
)

// startUclient starts coturn's turnutils_uclient relaying bounded
// traffic; wait waits for it (up to 60 s) and returns the messages sent,
// received and lost as it reports them. uclient starts each client's
// traffic 1 to 6 s after it allocates, at random, so a test starts its
// runs together and waits for each in turn: the runs overlap.
func startUclient(t testing.TB, flags []string, server netip.AddrPort, peerPort, clients, msgs int) (wait func(testing.TB) (sent, recv, lost int)) {
	t.Helper()
	bin, err := exec.LookPath("turnutils_uclient")
	if err != nil {
		t.Skip("turnutils_uclient not installed (package coturn)")
	}
	args := append([]string{}, flags...)
	args = append(args, "-u", testUser, "-w", testPass, "-p", strconv.Itoa(int(server.Port())),
		"-m", strconv.Itoa(clients), "-n", strconv.Itoa(msgs), "-z", "5", "-l", "172",
		"-e", "127.0.0.1", "-r", strconv.Itoa(peerPort), "127.0.0.1")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	cmd := exec.CommandContext(ctx, bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	var waitErr error
	waited := sync.OnceFunc(func() { waitErr = cmd.Wait(); cancel() })
	t.Cleanup(waited) // the context kills it at the latest
	return func(t testing.TB) (sent, recv, lost int) {
		t.Helper()
		waited()
		if waitErr != nil {
			t.Fatalf("uclient %v: %v\n%s", flags, waitErr, out.Bytes())
		}
		m := reRecv.FindAllSubmatch(out.Bytes(), -1)
		l := reLost.FindSubmatch(out.Bytes())
		if len(m) == 0 || l == nil {
			t.Fatalf("uclient %v: cannot parse output:\n%s", flags, out.Bytes())
		}
		last := m[len(m)-1]
		sent, _ = strconv.Atoi(string(last[1]))
		recv, _ = strconv.Atoi(string(last[2]))
		lost, _ = strconv.Atoi(string(l[1]))
		return sent, recv, lost
	}
}

// TestUclientInterop relays coturn's turnutils_uclient traffic over UDP,
// TCP, TLS and DTLS, and over UDP with a REST credential minted by uclient from
// the shared secret, to turnutils_peer with zero loss.
func TestUclientInterop(t *testing.T) {
	verifyNoLeaks(t)
	peer := startTurnutilsPeer(t)
	s, _ := newTestServer(t, func(c *Config) {
		c.AllowLoopbackPeers = true
		c.TLSListen = netip.MustParseAddrPort("127.0.0.1:0")
		c.AuthSecret = "uclient-secret"
	})
	const clients, msgs = 4, 40
	cases := []struct {
		name  string
		flags []string
		addr  netip.AddrPort
	}{
		{"udp", nil, s.Addr()},
		{"tcp", []string{"-t"}, s.TCPAddr()},
		{"tls", []string{"-t", "-S"}, s.TLSAddr()},
		{"dtls", []string{"-S"}, s.DTLSAddr()},
		// uclient mints a TURN REST credential from the shared secret.
		{"udp-rest", []string{"-W", "uclient-secret"}, s.Addr()},
	}
	runs := make([]func(testing.TB) (int, int, int), len(cases))
	for i, tc := range cases {
		runs[i] = startUclient(t, tc.flags, tc.addr, peer, clients, msgs)
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sent, recv, lost := runs[i](t)
			if want := clients * msgs; sent != want || recv != want || lost != 0 {
				t.Errorf("sent %d, received %d, lost %d; want %d, %d, 0", sent, recv, lost, want, want)
			}
		})
	}
	if got := fmt.Sprint(s.Allocations()); got != "0" {
		t.Logf("allocations left open by uclient: %s (they expire)", got)
	}
}
