// Package clustertest starts NATS clusters of embedded servers for tests:
// N servers routed together with a cluster secret and JetStream, sharing
// one set of identities.
package clustertest

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// Secret is the cluster secret of test clusters.
const Secret = "test-cluster-secret-0123456789"

// Cluster is N embedded servers routed together.
type Cluster struct {
	t       testing.TB
	Servers []*bus.Embedded
	// Routes are the servers' route URLs.
	Routes []string
}

// Start starts n servers (n 1 makes a single server with JetStream and no
// routes) and waits until they are routed and JetStream is ready.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	ip := netip.MustParseAddr("127.0.0.1")
	base := testkit.FreePorts(t, 2*n, ip)
	c := &Cluster{t: t}
	for i := 0; i < n; i++ {
		c.Routes = append(c.Routes, fmt.Sprintf("nats://127.0.0.1:%d", base+n+i))
	}
	for i := 0; i < n; i++ {
		cfg := bus.EmbeddedConfig{
			Listen:       fmt.Sprintf("127.0.0.1:%d", base+i),
			ServerName:   fmt.Sprintf("n%d", i+1),
			JetStreamDir: t.TempDir(),
		}
		if n > 1 {
			cfg.Cluster = bus.ClusterConfig{Listen: fmt.Sprintf("127.0.0.1:%d", base+n+i), Secret: Secret}
			for j, r := range c.Routes {
				if j != i {
					cfg.Cluster.Routes = append(cfg.Cluster.Routes, r)
				}
			}
		}
		e, err := bus.StartEmbedded(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		c.Servers = append(c.Servers, e)
	}
	testkit.WaitFor(t, 20*time.Second, "cluster routed with JetStream ready", func() bool {
		for _, e := range c.Servers {
			if e.Routes() < n-1 || !e.JetStreamReady() {
				return false
			}
		}
		return true
	})
	return c
}

// URLs returns every server's client URL.
func (c *Cluster) URLs() []string {
	var out []string
	for _, e := range c.Servers {
		out = append(out, e.URL())
	}
	return out
}

// Identity makes a credential for role (and node) allowed on every server.
func (c *Cluster) Identity(role bus.Role, node string) *bus.Identity {
	c.t.Helper()
	id, err := bus.NewIdentity(role, node)
	if err != nil {
		c.t.Fatal(err)
	}
	for _, e := range c.Servers {
		e.Allow(id)
	}
	return id
}

// Config is the bus.Config of a connection as role (and node) to servers
// (indexes into Servers; none: all of them).
func (c *Cluster) Config(name string, role bus.Role, node string, servers ...int) bus.Config {
	c.t.Helper()
	cfg := bus.Config{Name: name, Identity: c.Identity(role, node)}
	if len(servers) == 0 {
		cfg.URLs = c.URLs()
	}
	for _, i := range servers {
		cfg.URLs = append(cfg.URLs, c.Servers[i].URL())
	}
	if role == bus.RoleController {
		cfg.InboxPrefix = bus.ControllerInboxPrefix
	}
	return cfg
}

// Connect connects as role (and node) to servers (none: all).
func (c *Cluster) Connect(name string, role bus.Role, node string, servers ...int) *bus.Client {
	c.t.Helper()
	cl, err := bus.Connect(c.Config(name, role, node, servers...), nil)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cl.Close() })
	return cl
}
