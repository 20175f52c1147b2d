package main

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// traverse distribute takes a stream over the bus and a receiver over
// HTTP, distributes RTP to both, exports its path, and stops on signal.
func TestDistributeCommand(t *testing.T) {
	e, err := bus.StartEmbedded(bus.EmbeddedConfig{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	id, err := e.NewIdentity(bus.RoleDistribute, "d1")
	if err != nil {
		t.Fatal(err)
	}
	creds := filepath.Join(t.TempDir(), "d1.creds")
	if err := id.WriteFile(creds); err != nil {
		t.Fatal(err)
	}
	sig, err := e.NewIdentity(bus.RoleSignal, "")
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := bus.Connect(bus.Config{URLs: []string{e.URL()}, Name: "ctl", Identity: sig}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()

	p := testkit.FreePorts(t, 3)
	media := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(p))
	api, adm := "127.0.0.1:"+strconv.Itoa(p+1), "127.0.0.1:"+strconv.Itoa(p+2)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runDistribute(ctx, []string{"--listen", media.String(), "--api", api, "--api-token", "tok", "--admin", adm,
			"--allow-loopback-receivers", "--path", "userspace", "--nats", e.URL(), "--nats-creds", creds, "--rtcp-timeout", "-1s", "--log-level", "warn"})
	}()
	defer testkit.Stop(t, "distribute", cancel, done)
	get := func(url string, token string) (int, string) {
		req, _ := http.NewRequest("GET", url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	testkit.WaitFor(t, 10*time.Second, "readyz", func() bool { c, _ := get("http://"+adm+"/readyz", ""); return c == 200 })

	r1 := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	r2 := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	a1, a2 := r1.LocalAddr().(*net.UDPAddr).AddrPort(), r2.LocalAddr().(*net.UDPAddr).AddrPort()
	testkit.WaitFor(t, 10*time.Second, "the bus handler", func() bool {
		_, err := ctl.Distribute(context.Background(), "d1", bus.DistributeRequest{Op: bus.DistributeList})
		return err == nil
	})
	if _, err := ctl.Distribute(context.Background(), "d1", bus.DistributeRequest{Op: bus.DistributeAddStream, Dst: media, Receivers: []netip.AddrPort{a1}}); err != nil {
		t.Fatal(err)
	}
	body := `{"op":"add_receivers","dst":"` + media.String() + `","receivers":["` + a2.String() + `"]}`
	req, _ := http.NewRequest("POST", "http://"+api+"/v1/distribute", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer tok")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 204 {
		t.Fatalf("add receiver over HTTP: %d", resp.StatusCode)
	}
	sender := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	pkt := make([]byte, 200)
	pkt[0], pkt[1] = 0x80, 96
	binary.BigEndian.PutUint32(pkt[8:], 99)
	if _, err := sender.WriteToUDPAddrPort(pkt, media); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	for _, r := range []*net.UDPConn{r1, r2} {
		_ = r.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, from, err := r.ReadFromUDPAddrPort(buf); err != nil || n != 200 || from != media {
			t.Fatalf("receiver got %d bytes from %v: %v", n, from, err)
		}
	}
	// The counters are added after the batch is sent: wait for them.
	testkit.WaitFor(t, 5*time.Second, "the path and the counters in /metrics", func() bool {
		c, m := get("http://"+adm+"/metrics", "")
		return c == 200 && strings.Contains(m, `traverse_distribute_path_info{path="userspace"} 1`) &&
			strings.Contains(m, "traverse_distribute_packets_out_total 2")
	})
	if c, _ := get("http://"+api+"/v1/streams", ""); c != 401 {
		t.Errorf("streams without a token: %d", c)
	}
}

// --path: ebpf refuses a wildcard listen address (the program matches
// one address), an unknown path is refused; neither attaches anything.
func TestDistributeCommandPath(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--path", "ebpf", "--listen", "0.0.0.0:0"}, "not a specific IPv4 address"},
		{[]string{"--path", "ebpf"}, "wildcard"},
		{[]string{"--path", "dpdk", "--listen", "127.0.0.1:0"}, "want auto, ebpf or userspace"},
	} {
		err := runDistribute(context.Background(), append(tc.args, "--api", "", "--admin", ""))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}

// --api without a token is refused at start.
func TestDistributeCommandNeedsToken(t *testing.T) {
	err := runDistribute(context.Background(), []string{"--listen", "127.0.0.1:0", "--path", "userspace", "--api", "127.0.0.1:0", "--admin", ""})
	if err == nil || !strings.Contains(err.Error(), "api-token") {
		t.Fatalf("started without a token: %v", err)
	}
}
