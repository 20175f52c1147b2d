package bus

import (
	"testing"
	"time"
)

// FuzzDecodeNodeDown: NodeDown decodes or is refused, never panics, and
// what decodes round-trips.
func FuzzDecodeNodeDown(f *testing.F) {
	for _, s := range []string{
		`{"node":"sfu-1","reason":"dead","controller":"ctl-1","lease":7,"time":"2026-01-01T00:00:00Z"}`,
		`{"node":"sfu-1","reason":"draining","controller":"ctl-1","lease":1}`,
		`{"node":"a b","reason":"dead","controller":"c","lease":1}`, `{"node":"n","reason":"x"}`, `null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) { check[NodeDown](t, b) })
}

// TestNodeDownSubject: a NodeDown is delivered on its node's subject; one
// naming another node than its subject's is dropped and counted.
func TestNodeDownSubject(t *testing.T) {
	e, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	sig, ctl := connectAs(t, e, RoleSignal, ""), connectAs(t, e, RoleController, "")
	got := make(chan NodeDown, 4)
	if _, err := sig.SubscribeNodeDown(func(d NodeDown) { got <- d }); err != nil {
		t.Fatal(err)
	}
	if err := ctl.Conn().Publish(NodeDownSubject("n1"), []byte(`{"node":"n2","reason":"dead","controller":"c","lease":1}`)); err != nil {
		t.Fatal(err)
	}
	if err := ctl.PublishNodeDown(NodeDown{Node: "n1", Reason: NodeDownDead, Controller: "c", Lease: 3, Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-got:
		if d.Node != "n1" || d.Lease != 3 {
			t.Fatalf("got %+v", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no node down")
	}
	if sig.BadMessages() != 1 {
		t.Fatalf("bad messages %d, want 1", sig.BadMessages())
	}
	if err := ctl.PublishNodeDown(NodeDown{Node: "n1", Reason: "bored", Controller: "c", Lease: 3}); err == nil {
		t.Fatal("invalid node down published")
	}
}
