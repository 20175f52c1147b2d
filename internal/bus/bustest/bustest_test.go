package bustest

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/traverse-rtc/traverse/internal/bus"
)

// TestMain fails the package if a test leaves a goroutine behind: the bus
// and its clients must be closed when each test ends.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestConnect: two clients of one embedded bus reach each other (a node's
// request handler answers a signal client's request), and everything
// closes when the test ends (TestMain's goleak).
func TestConnect(t *testing.T) {
	emb := Start(t)
	node, sig := Connect(t, emb, bus.RoleNode, "n1"), Connect(t, emb, bus.RoleSignal, "")
	if _, err := node.HandleRequests("n1", func(_ context.Context, r bus.Request) (bus.Reply, error) {
		return bus.Reply{SDP: "answer " + r.Session}, nil
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rep, err := sig.Request(ctx, "n1", bus.Request{Type: bus.RequestLeave, Session: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	if rep.SDP != "answer s1" {
		t.Errorf("reply %+v, want SDP %q", rep, "answer s1")
	}
}
