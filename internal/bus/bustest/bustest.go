// Package bustest gives tests a real bus: an embedded NATS server on a
// free loopback port and clients of any role connected to it, all closed
// when the test ends.
package bustest

import (
	"testing"

	"github.com/traverse-rtc/traverse/internal/bus"
)

// Start starts an embedded bus on 127.0.0.1 (a free port), closed when the
// test ends.
func Start(t testing.TB) *bus.Embedded {
	t.Helper()
	emb, err := bus.StartEmbedded(bus.EmbeddedConfig{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = emb.Close() })
	return emb
}

// Connect connects a client to emb with a new identity of role (node: the
// node's id for bus.RoleNode, "" otherwise), closed when the test ends.
func Connect(t testing.TB, emb *bus.Embedded, role bus.Role, node string) *bus.Client {
	t.Helper()
	id, err := emb.NewIdentity(role, node)
	if err != nil {
		t.Fatal(err)
	}
	c, err := bus.Connect(bus.Config{URLs: []string{emb.URL()}, Identity: id}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}
