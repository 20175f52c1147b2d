//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package turnchannel

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/turn/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/kfast/kfasttest"
	"github.com/traverse-rtc/traverse/internal/testkit"
	tturn "github.com/traverse-rtc/traverse/internal/turn"
)

// The lab (package kfasttest): the TURN server runs in the gateway
// namespace, listening on the client side (10.1.0.1) and relaying from the
// server side (10.2.0.1); the client is in the client namespace, the peer
// (an echo) in the server namespace. The gateway does not forward IPv4:
// whatever crosses it went through the server's sockets or the program.
//
// The server runs in a helper process (this test binary, re-executed) that
// starts inside the gateway namespace, so that every thread of it, and
// every relay socket it opens, lives there.
var (
	labListen = netip.AddrPortFrom(kfasttest.OutsideIP, 3478)
	labPeer   = netip.AddrPortFrom(kfasttest.ServerIP, 5000)
	// The loopback variant: everything on the gateway namespace's lo.
	loListen = netip.MustParseAddrPort("127.0.0.1:3478")
	loPeer   = netip.MustParseAddrPort("127.0.0.1:5000")
)

const (
	helperEnv  = "TURNCHANNEL_HELPER"
	clsactEnv  = "TURNCHANNEL_CLSACT"
	loEnv      = "TURNCHANNEL_LOOPBACK"
	labUser    = "lab"
	labPass    = "lab"
	labRealm   = "lab"
	helperWait = 10 * time.Second
	// labPoll is how often the helper's server reads the kernel counters
	// (turn.Config.PollEvery), so that LabSuite sees them settle sooner
	// than at the default 1 s.
	labPoll = 100 * time.Millisecond
)

func TestMain(m *testing.M) {
	if sock := os.Getenv(helperEnv); sock != "" {
		if err := runHelper(sock, os.Getenv(clsactEnv) == "1", os.Getenv(loEnv) == "1"); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// recorder remembers the flows the server installed, so the helper can
// move their deadlines (simulating expiry in the kernel).
type recorder struct {
	*Offloader
	mu    sync.Mutex
	flows map[tturn.OffloadFlow]time.Time
}

func (r *recorder) Install(f tturn.OffloadFlow, deadline time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	err := r.Offloader.Install(f, deadline)
	if err == nil {
		r.flows[f] = deadline
	}
	return err
}

func (r *recorder) Remove(f tturn.OffloadFlow) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.flows, f)
	return r.Offloader.Remove(f)
}

// expire moves every installed flow's kernel deadline to now.
func (r *recorder) expire() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for f := range r.flows {
		if err := r.Offloader.Install(f, time.Now()); err != nil {
			return err
		}
	}
	return nil
}

// runHelper serves TURN in the namespace it was started in until stdin
// closes, answering /stats (metrics as JSON), /expire and /attachments on
// the unix socket sock. With loopback, it listens and relays on 127.0.0.1.
func runHelper(sock string, clsact, loopback bool) error {
	off, err := New(Config{Clsact: clsact})
	if err != nil {
		return err
	}
	defer off.Close()
	rec := &recorder{Offloader: off, flows: map[tturn.OffloadFlow]time.Time{}}
	reg := prometheus.NewRegistry()
	cfg := tturn.Config{Listen: labListen, NoTCP: true, RelayIP: kfasttest.InsideIP, RelayPortLow: 50000, RelayPortHigh: 50999,
		Realm: labRealm, Users: map[string]string{labUser: labPass}, AllowPeers: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/24")},
		Registerer: reg, Offloader: rec, PollEvery: labPoll}
	if loopback {
		cfg.Listen, cfg.RelayIP, cfg.AllowLoopbackPeers = loListen, loListen.Addr(), true
	}
	s, err := tturn.New(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- s.Run(ctx) }()
	defer func() { cancel(); <-ran }()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/stats", func(w http.ResponseWriter, _ *http.Request) {
		mfs, err := reg.Gather()
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		out := map[string]float64{}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				name := mf.GetName()
				for _, l := range m.GetLabel() {
					name += ":" + l.GetValue()
				}
				switch {
				case m.Counter != nil:
					out[name] = m.Counter.GetValue()
				case m.Gauge != nil:
					out[name] = m.Gauge.GetValue()
				}
			}
		}
		_ = json.NewEncoder(w).Encode(out)
	})
	mux.HandleFunc("/expire", func(w http.ResponseWriter, _ *http.Request) {
		if err := rec.expire(); err != nil {
			http.Error(w, err.Error(), 500)
		}
	})
	mux.HandleFunc("/attachments", func(w http.ResponseWriter, _ *http.Request) {
		var modes []string
		for _, m := range off.Attachments() {
			modes = append(modes, string(m))
		}
		sort.Strings(modes)
		_, _ = io.WriteString(w, strings.Join(modes, ","))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

type helper struct {
	c *http.Client
}

func (h *helper) get(t *testing.T, path string) string {
	t.Helper()
	resp, err := h.c.Get("http://helper" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%s: %d %s %v", path, resp.StatusCode, b, err)
	}
	return string(b)
}

func (h *helper) stats(t *testing.T) map[string]float64 {
	t.Helper()
	var m map[string]float64
	if err := json.Unmarshal([]byte(h.get(t, "/stats")), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// startHelper starts the TURN server process in the gateway namespace.
func startHelper(t *testing.T, l *kfasttest.Lab, clsact, loopback bool) *helper {
	sock := filepath.Join(t.TempDir(), "helper.sock")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+sock)
	if clsact {
		cmd.Env = append(cmd.Env, clsactEnv+"=1")
	}
	if loopback {
		cmd.Env = append(cmd.Env, loEnv+"=1")
	}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	// Forked from a thread in the gateway namespace, the child is there.
	l.In(t, l.Gateway, func() {
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
	})
	done := testkit.Exited(cmd)
	t.Cleanup(func() {
		stdin.Close()
		if err, ok := testkit.AwaitExit(cmd, done, helperWait); !ok {
			t.Error("helper did not exit")
		} else if err != nil {
			t.Errorf("helper: %v", err)
		}
	})
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- line
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case line := <-ready:
		if strings.TrimSpace(line) != "ready" {
			t.Fatalf("helper said %q", line)
		}
	case <-time.After(helperWait):
		t.Fatal("helper not ready")
	}
	return &helper{c: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}}
}

// TestLabRelay: the pion/turn client relays through traverse to an echo
// peer across the lab with the offload on. Once the channel is bound the
// program carries both directions: not one packet lost, the server's
// user-space counters stop while the kernel's grow. Moving the kernel
// deadline past (as expiry does) hands the flow back to user space, which
// carries it on; deallocation removes it. The loopback variant runs client,
// server and peer on one namespace's lo, where the program hands rewritten
// packets up the stack instead of redirecting them (the benchmark's case).
func TestLabRelay(t *testing.T) {
	for _, tc := range []struct {
		name         string
		clsact       bool
		fullChecksum bool
		loopback     bool
	}{
		{"tcx, partial checksums", false, false, false},
		{"clsact, full checksums", true, true, false},
		{"lo, up the stack", false, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := kfasttest.New(t, false)
			if tc.fullChecksum {
				l.FullChecksums(t)
			}
			testLabRelay(t, l, tc.clsact, tc.loopback)
		})
	}
}

func testLabRelay(t *testing.T, l *kfasttest.Lab, clsact, loopback bool) {
	h := startHelper(t, l, clsact, loopback)
	listen, peerAP, clientIP := labListen, labPeer, kfasttest.ClientIP
	peerNS, clientNS := l.Server, l.Client
	if loopback {
		listen, peerAP, clientIP = loListen, loPeer, loListen.Addr()
		peerNS, clientNS = l.Gateway, l.Gateway
	}

	// The echo peer.
	var peer *net.UDPConn
	l.In(t, peerNS, func() { peer = testkit.ListenUDP(t, peerAP) })
	testkit.Echo(t, peer, nil)

	// The pion/turn client.
	var conn net.PacketConn
	l.In(t, clientNS, func() {
		var err error
		if conn, err = net.ListenPacket("udp4", netip.AddrPortFrom(clientIP, 0).String()); err != nil {
			t.Fatal(err)
		}
	})
	c, err := turn.NewClient(&turn.ClientConfig{STUNServerAddr: listen.String(), TURNServerAddr: listen.String(),
		Username: labUser, Password: labPass, Realm: labRealm, Conn: conn})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); conn.Close() })
	relay, err := c.Allocate()
	if err != nil {
		t.Fatalf("allocate: %v", err)
	}
	defer relay.Close()

	path := &turnPath{h: h, relay: relay, peer: net.UDPAddrFromAddrPort(peerAP), buf: make([]byte, 2048)}
	stat := func(name string) float64 { return h.stats(t)[name] }
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		if !testkit.Eventually(10*time.Second, cond) {
			t.Fatalf("%s: not in 10 s; stats %v", what, h.stats(t))
		}
	}

	// pion sends Send indications until its ChannelBind lands.
	waitFor("channel offloaded", func() bool { path.RoundTrip(t); return stat("traverse_turn_offload_flows") == 1 })
	want := "tcx,tcx" // out0 and in0
	switch {
	case clsact:
		want = "clsact,clsact"
	case loopback:
		want = "tcx" // lo
	}
	if got := h.get(t, "/attachments"); got != want {
		t.Errorf("attachments %q, want %q", got, want)
	}
	// Packets queued on the sockets before the entries landed may still be
	// relayed by user space, and counters are read every labPoll: the suite
	// waits for both to settle.
	for range 5 {
		path.RoundTrip(t)
	}
	const n = 200
	kfasttest.LabSuite(t, path, n, 5*labPoll)
	if d := path.bytes1 - path.bytes0; d < n*160 || d > n*163 {
		t.Errorf("kernel counted %v data bytes to the peer for %d messages of 160-163 bytes", d, n)
	}

	// Deallocation removes the flow.
	if err := path.relay.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor("flow removed", func() bool { return stat("traverse_turn_offload_flows") == 0 })
}

// TestLabUclient: coturn's turnutils_uclient relays through traverse with
// the offload on, to a turnutils_peer echo, all on one namespace's lo:
// odd-length ChannelData without padding, and with the padding of -D
// (which pjnath-style clients send). Every message comes back and every
// relayed packet went through the kernel.
func TestLabUclient(t *testing.T) {
	for _, b := range []string{"turnutils_uclient", "turnutils_peer"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed (apt-get install coturn)", b)
		}
	}
	for _, tc := range []struct {
		name  string
		flags []string
	}{
		{"unpadded odd length", nil},
		{"padded (-D)", []string{"-D"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := kfasttest.New(t, false)
			h := startHelper(t, l, false, true)
			peer := exec.Command("turnutils_peer", "-L", "127.0.0.1", "-p", "5000")
			l.In(t, l.Gateway, func() {
				if err := peer.Start(); err != nil {
					t.Fatal(err)
				}
			})
			t.Cleanup(func() { _ = peer.Process.Kill(); _ = peer.Wait() })
			const clients, msgs = 2, 100
			args := append([]string{"-u", labUser, "-w", labPass, "-p", "3478", "-m", fmt.Sprint(clients), "-n", fmt.Sprint(msgs),
				"-z", "5", "-l", "171", "-c", "-e", "127.0.0.1", "-r", "5000"}, tc.flags...)
			uc := exec.Command("turnutils_uclient", append(args, "127.0.0.1")...)
			var out strings.Builder
			uc.Stdout, uc.Stderr = &out, &out
			l.In(t, l.Gateway, func() {
				if err := uc.Start(); err != nil {
					t.Fatal(err)
				}
			})
			if err, ok := testkit.AwaitExit(uc, testkit.Exited(uc), 60*time.Second); !ok {
				t.Fatalf("uclient did not finish\n%s", out.String())
			} else if err != nil {
				t.Fatalf("uclient: %v\n%s", err, out.String())
			}
			o := out.String()
			if !strings.Contains(o, "Total lost packets 0 ") {
				t.Errorf("uclient lost packets:\n%s", o)
			}
			want := fmt.Sprintf("tot_send_msgs=%d, tot_recv_msgs=%d", clients*msgs, clients*msgs)
			if !strings.Contains(o, want) {
				t.Errorf("uclient: want %q in\n%s", want, o)
			}
			// Counters are read every second.
			var m map[string]float64
			testkit.Eventually(5*time.Second, func() bool {
				m = h.stats(t)
				return m["traverse_turn_offload_packets_total:to_peer"] >= clients*msgs
			})
			for _, d := range []string{"to_peer", "to_client"} {
				if k, all := m["traverse_turn_offload_packets_total:"+d], m["traverse_turn_relayed_packets_total:"+d]; k != clients*msgs || all != k {
					t.Errorf("%s: %v relayed, %v of them in the kernel; want %d, all in the kernel", d, all, k, clients*msgs)
				}
			}
			if b := m["traverse_turn_offload_bytes_total:to_peer"]; b != clients*msgs*171 {
				t.Errorf("kernel counted %v data bytes to the peer, want %d (padding not counted)", b, clients*msgs*171)
			}
		})
	}
}

// turnPath is the lab test's channel as the conformance suite drives it:
// the pion client's relayed connection to the echo peer, the server's
// metrics as counters, and the kernel deadline moved to now (as expiry
// does) as the hand-back.
type turnPath struct {
	h      *helper
	relay  net.PacketConn
	peer   net.Addr
	buf    []byte
	seq    int
	last   map[string]float64 // the last metrics read
	bytes0 float64            // kernel data bytes to the peer at the first round trip after a read
	bytes1 float64            // and at the hand-back
	sent   bool
}

func (p *turnPath) RoundTrip(t *testing.T) {
	t.Helper()
	if !p.sent && p.last != nil {
		p.bytes0, p.sent = p.last["traverse_turn_offload_bytes_total:to_peer"], true
	}
	// Lengths cycle through all four residues mod 4: pion pads ChannelData
	// to 4 bytes, so the program strips 0-3 bytes.
	seq := p.seq
	p.seq++
	msg := make([]byte, 160+seq%4)
	msg[0], msg[1], msg[2] = byte(seq>>16), byte(seq>>8), byte(seq)
	for i := 3; i < len(msg); i++ {
		msg[i] = byte(i * seq)
	}
	if _, err := p.relay.WriteTo(msg, p.peer); err != nil {
		t.Fatalf("write %d: %v", seq, err)
	}
	for {
		_ = p.relay.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, from, err := p.relay.ReadFrom(p.buf)
		if err != nil {
			t.Fatalf("packet %d lost: %v", seq, err)
		}
		if from.String() == p.peer.String() && string(p.buf[:n]) == string(msg) {
			return
		}
	}
}

func (p *turnPath) read(t *testing.T) map[string]float64 {
	p.last = p.h.stats(t)
	return p.last
}

func (p *turnPath) UserSpace(t *testing.T) uint64 {
	m := p.read(t)
	return uint64(m["traverse_turn_relayed_packets_total:to_peer"] + m["traverse_turn_relayed_packets_total:to_client"] -
		m["traverse_turn_offload_packets_total:to_peer"] - m["traverse_turn_offload_packets_total:to_client"])
}

func (p *turnPath) Kernel(t *testing.T) uint64 {
	m := p.read(t)
	return uint64(m["traverse_turn_offload_packets_total:to_peer"] + m["traverse_turn_offload_packets_total:to_client"])
}

// HandBack: expiry in the kernel; the program hands packets to user space,
// which still holds the channel and relays them.
func (p *turnPath) HandBack(t *testing.T) {
	p.bytes1 = p.last["traverse_turn_offload_bytes_total:to_peer"]
	p.h.get(t, "/expire")
}
