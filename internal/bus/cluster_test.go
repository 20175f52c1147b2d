package bus

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/testkit"
)

const testSecret = "cluster-test-secret-0123456789"

// startCluster starts n routed servers (ports from base) with JetStream.
func startCluster(t *testing.T, n int, secret func(i int) string) ([]*Embedded, []string) {
	t.Helper()
	base := testkit.FreePorts(t, 2*n, netip.MustParseAddr("127.0.0.1"))
	var routes []string
	for i := 0; i < n; i++ {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", base+n+i))
	}
	var es []*Embedded
	for i := 0; i < n; i++ {
		cfg := EmbeddedConfig{Listen: fmt.Sprintf("127.0.0.1:%d", base+i), ServerName: fmt.Sprintf("s%d", i),
			JetStreamDir: t.TempDir(),
			Cluster:      ClusterConfig{Listen: fmt.Sprintf("127.0.0.1:%d", base+n+i), Secret: secret(i)}}
		for j, r := range routes {
			if j != i {
				cfg.Cluster.Routes = append(cfg.Cluster.Routes, r)
			}
		}
		e, err := StartEmbedded(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		es = append(es, e)
	}
	return es, routes
}

// TestClusterRoutes: three servers route to each other; a node's
// announcement published on one reaches a signal server on another.
func TestClusterRoutes(t *testing.T) {
	es, _ := startCluster(t, 3, func(int) string { return testSecret })
	testkit.WaitFor(t, 10*time.Second, "full mesh of routes and JetStream", func() bool {
		for _, e := range es {
			if e.Routes() < 2 || !e.JetStreamReady() {
				return false
			}
		}
		return true
	})
	sig := connectAs(t, es[0], RoleSignal, "")
	idB := clusterIdentity(t, es, RoleNode)
	nb, err := Connect(Config{URLs: []string{es[2].URL()}, Identity: idB}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer nb.Close()
	got := make(chan NodeAnnounce, 10)
	if _, err := sig.SubscribeNodes(func(a NodeAnnounce) { got <- a }); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "announcement across the cluster", func() bool {
		if err := nb.AnnounceNode(NodeAnnounce{Node: "nB", UDP: "192.0.2.1:7882", Time: time.Now()}); err != nil {
			t.Fatal(err)
		}
		select {
		case a := <-got:
			return a.Node == "nB"
		case <-time.After(100 * time.Millisecond):
			return false
		}
	})
}

// clusterIdentity makes a node "nB" identity allowed on every server.
func clusterIdentity(t *testing.T, es []*Embedded, role Role) *Identity {
	t.Helper()
	id, err := NewIdentity(role, "nB")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		e.Allow(id)
	}
	return id
}

// TestClusterRouteAuth mounts the attack on the route port: a server
// with the wrong secret (or none) that routes to the cluster is refused
// and never joins it, and a raw route CONNECT without credentials is
// closed.
func TestClusterRouteAuth(t *testing.T) {
	es, routes := startCluster(t, 2, func(int) string { return testSecret })
	testkit.WaitFor(t, 10*time.Second, "two routed servers", func() bool {
		return es[0].Routes() >= 1 && es[1].Routes() >= 1
	})
	before := es[0].Routes()
	base := testkit.FreePorts(t, 2, netip.MustParseAddr("127.0.0.1"))
	rogue, err := StartEmbedded(EmbeddedConfig{Listen: fmt.Sprintf("127.0.0.1:%d", base), ServerName: "rogue",
		JetStreamDir: t.TempDir(),
		Cluster: ClusterConfig{Listen: fmt.Sprintf("127.0.0.1:%d", base+1), Secret: "wrong-secret-0123456789",
			Routes: routes}})
	if err != nil {
		t.Fatal(err)
	}
	defer rogue.Close()
	// The rogue keeps trying; give it a few attempts (route retries are
	// about 1 s apart) and check that the cluster never took its route
	// and nothing published on the rogue reached the cluster. The rogue's
	// own route count is not the test: as the soliciting side it counts
	// the route for a moment, between the cluster's INFO and the cluster
	// closing it for the bad CONNECT.
	sig := connectAs(t, es[0], RoleSignal, "")
	got := make(chan NodeAnnounce, 10)
	if _, err := sig.SubscribeNodes(func(a NodeAnnounce) { got <- a }); err != nil {
		t.Fatal(err)
	}
	nr := connectAs(t, rogue, RoleNode, "nR")
	if testkit.Eventually(2500*time.Millisecond, func() bool {
		if err := nr.AnnounceNode(NodeAnnounce{Node: "nR", UDP: "192.0.2.9:7882", Time: time.Now()}); err != nil {
			t.Fatal(err)
		}
		select {
		case a := <-got:
			t.Logf("announcement from the rogue's side reached the cluster: %+v", a)
			return true
		case <-time.After(50 * time.Millisecond):
		}
		return es[0].Routes() != before || es[1].Routes() != before
	}) {
		t.Fatalf("rogue routed: servers have %d and %d routes (were %d)", es[0].Routes(), es[1].Routes(), before)
	}
	// A raw route connection without credentials is dropped.
	c, err := net.Dial("tcp", strings.TrimPrefix(routes[0], "nats://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"evil\",\"cluster\":\"traverse\"}\r\nPING\r\n")
	buf := make([]byte, 4096)
	var all string
	for {
		n, err := c.Read(buf)
		all += string(buf[:n])
		if err != nil {
			break
		}
	}
	if !strings.Contains(all, "Authorization Violation") {
		t.Fatalf("unauthenticated route got %q", all)
	}
}

// TestClusterConfigErrors: a cluster without a secret, a route carrying
// its own credentials, or no JetStream directory is refused.
func TestClusterConfigErrors(t *testing.T) {
	for name, cfg := range map[string]EmbeddedConfig{
		"no secret":   {Listen: "127.0.0.1:0", JetStreamDir: t.TempDir(), Cluster: ClusterConfig{Listen: "127.0.0.1:0"}},
		"short":       {Listen: "127.0.0.1:0", JetStreamDir: t.TempDir(), Cluster: ClusterConfig{Listen: "127.0.0.1:0", Secret: "short"}},
		"route creds": {Listen: "127.0.0.1:0", JetStreamDir: t.TempDir(), Cluster: ClusterConfig{Listen: "127.0.0.1:0", Secret: testSecret, Routes: []string{"nats://u:p@127.0.0.1:1"}}},
		"route url":   {Listen: "127.0.0.1:0", JetStreamDir: t.TempDir(), Cluster: ClusterConfig{Listen: "127.0.0.1:0", Secret: testSecret, Routes: []string{"http://127.0.0.1:1"}}},
		"no js":       {Listen: "127.0.0.1:0", Cluster: ClusterConfig{Listen: "127.0.0.1:0", Secret: testSecret}},
		"routes only": {Listen: "127.0.0.1:0", Cluster: ClusterConfig{Routes: []string{"nats://127.0.0.1:1"}}},
	} {
		e, err := StartEmbedded(cfg)
		if err == nil {
			e.Close()
			t.Errorf("%s: started", name)
		} else if !errors.Is(err, ErrCluster) {
			t.Errorf("%s: %v, want ErrCluster", name, err)
		}
	}
}

// TestEmbeddedAddressInUse: a second bus on a taken port says so at once.
func TestEmbeddedAddressInUse(t *testing.T) {
	e, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", NoAuth: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	start := time.Now()
	_, err = StartEmbedded(EmbeddedConfig{Listen: e.Addr().String(), NoAuth: true})
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("second bus: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %v", d)
	}
}

// TestClusterSecretFile: written once with mode 0600, read back the same;
// a file others may read is refused.
func TestClusterSecretFile(t *testing.T) {
	p := t.TempDir() + "/cluster.secret"
	a, err := ClusterSecretFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ClusterSecretFile(p)
	if err != nil || a != b || len(a) < minClusterSecret {
		t.Fatalf("%q %q %v", a, b, err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ClusterSecretFile(p); !errors.Is(err, ErrCredentialsMode) {
		t.Fatalf("readable secret: %v", err)
	}
}
