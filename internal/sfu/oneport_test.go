package sfu

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// procSockets returns, for the sockets this process holds whose local port
// is port, how many there are per /proc/net file, counting only TCP
// sockets in state (hex, "0A" LISTEN) when state is not empty.
func procSockets(t *testing.T, files []string, port uint16, state string) int {
	t.Helper()
	inodes := map[string]bool{}
	for _, f := range files {
		fh, err := os.Open(filepath.Join("/proc/net", f))
		if err != nil {
			continue // no IPv6
		}
		sc := bufio.NewScanner(fh)
		sc.Scan() // header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 {
				continue
			}
			local := fields[1]
			i := strings.LastIndexByte(local, ':')
			p, err := strconv.ParseUint(local[i+1:], 16, 16)
			if err != nil || uint16(p) != port {
				continue
			}
			if state != "" && fields[3] != state {
				continue
			}
			inodes[fields[9]] = true
		}
		fh.Close()
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	n := 0
	for _, fd := range fds {
		l, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err != nil {
			continue
		}
		if ino, ok := strings.CutPrefix(l, "socket:["); ok && inodes[strings.TrimSuffix(ino, "]")] {
			n++
		}
	}
	return n
}

// TestFiftyPeerConnectionsOneUDPSocketOneTCPListener is the one-port SFU claim:
// 50 peer connections in 5 rooms, some over ICE-TCP, all served by one UDP
// socket and one TCP listener of the SFU.
func TestFiftyPeerConnectionsOneUDPSocketOneTCPListener(t *testing.T) {
	if testing.Short() {
		t.Skip("50 peer connections")
	}
	h := newHarness(t, Config{})
	const rooms, perRoom, publishers = 5, 10, 2
	var clients []*loadgen.Client
	for r := range rooms {
		for i := range perRoom {
			clients = append(clients, h.dial(loadgen.ClientConfig{
				Room: fmt.Sprintf("room%d", r), Identity: fmt.Sprintf("r%dp%d", r, i),
				Publish: i < publishers, Subscribe: true, VideoBitrate: 100_000,
				TCP: i == perRoom-1, // one client per room over ICE-TCP
			}))
		}
	}
	for i, c := range clients {
		select {
		case <-c.Connected():
		case <-time.After(20 * time.Second):
			t.Fatalf("client %d not connected", i)
		}
	}
	for i, c := range clients {
		want := publishers
		if i%perRoom < publishers {
			want = publishers - 1
		}
		testkit.WaitFor(t, 20*time.Second, fmt.Sprintf("client %d receiving %d publishers", i, want), func() bool {
			return c.Receives(want, want, 10)
		})
	}
	if n := h.s.Sessions(); n != rooms*perRoom {
		t.Fatalf("%d sessions, want %d", n, rooms*perRoom)
	}
	udp := procSockets(t, []string{"udp", "udp6"}, h.s.UDPAddr().Port(), "")
	tcpListen := procSockets(t, []string{"tcp", "tcp6"}, h.s.TCPAddr().Port(), "0A")
	tcpConns := procSockets(t, []string{"tcp", "tcp6"}, h.s.TCPAddr().Port(), "01")
	t.Logf("SFU port %d: %d UDP sockets; port %d: %d TCP listeners, %d accepted ICE-TCP connections; %d packets forwarded",
		h.s.UDPAddr().Port(), udp, h.s.TCPAddr().Port(), tcpListen, tcpConns, h.s.Forwarded())
	if udp != 1 {
		t.Errorf("%d UDP sockets on the SFU port, want 1", udp)
	}
	if tcpListen != 1 {
		t.Errorf("%d TCP listeners on the SFU port, want 1", tcpListen)
	}
	if tcpConns < rooms {
		t.Errorf("%d ICE-TCP connections, want at least %d (one client per room uses TCP)", tcpConns, rooms)
	}
	// Every client's selected pair ends on one of those two ports: the SFU
	// opened no other media port.
	for i, c := range clients {
		pair, err := c.PC().SCTP().Transport().ICETransport().GetSelectedCandidatePair()
		if err != nil || pair == nil {
			t.Fatalf("client %d: no selected pair: %v", i, err)
		}
		if p := pair.Remote.Port; p != h.s.UDPAddr().Port() && p != h.s.TCPAddr().Port() {
			t.Errorf("client %d talks to SFU port %d (%s), not the one UDP or TCP port", i, p, pair.Remote.Protocol)
		}
	}
}
