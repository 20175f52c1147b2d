package sfu

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// A drain request: the node announces draining (and its rooms before),
// refuses new sessions, sends each session a rejoin message (reason
// drain) at its own moment of the period, and closes the session whose
// client never moved once the period and the grace are over; then, empty,
// it signals Run to return.
func TestDrain(t *testing.T) {
	h := newHarness(t, Config{})
	var mu sync.Mutex
	var anns []bus.NodeAnnounce
	asub, err := h.bc.SubscribeNodes(func(a bus.NodeAnnounce) { mu.Lock(); anns = append(anns, a); mu.Unlock() })
	if err != nil {
		t.Fatal(err)
	}
	defer asub.Unsubscribe()
	rejoins := make(chan string, 4)
	var sessions []string
	var clients []*loadgen.Client
	for _, id := range []string{"a", "b"} {
		sig := loadgen.NewBusSignaler(h.bc, "node1")
		sub, err := h.bc.SubscribeSession("node1", sig.Session(), func(m bus.SessionMessage) {
			if m.Type == bus.SessionRejoin && m.Reason == bus.RejoinDrain {
				rejoins <- m.Session
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		c, err := loadgen.Dial(ctx, h.api, sig, loadgen.ClientConfig{Room: "r", Identity: id, Publish: true, Subscribe: true, VideoBitrate: -1})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		clients = append(clients, c)
		sessions = append(sessions, sig.Session())
	}
	testkit.WaitFor(t, 5*time.Second, "the room announced", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(anns) > 0 && slices.Equal(anns[len(anns)-1].Rooms, []string{"r"})
	})

	start := time.Now()
	if _, err := h.bc.Request(context.Background(), "node1", bus.Request{Type: bus.RequestDrain, Drain: &bus.DrainRequest{PeriodMillis: 400}}); err != nil {
		t.Fatal(err)
	}
	if !h.s.Draining() {
		t.Fatal("not draining")
	}
	testkit.WaitFor(t, 2*time.Second, "draining announced", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return anns[len(anns)-1].Draining
	})
	var got []string
	var second time.Duration
	for len(got) < 2 {
		select {
		case s := <-rejoins:
			got = append(got, s)
			second = time.Since(start)
		case <-time.After(5 * time.Second):
			t.Fatalf("rejoin messages %v", got)
		}
	}
	slices.Sort(got)
	slices.Sort(sessions)
	if !slices.Equal(got, sessions) {
		t.Fatalf("rejoin for %v, sessions %v", got, sessions)
	}
	if second < 150*time.Millisecond {
		t.Errorf("second rejoin %v after the drain: not spread over the period", second)
	}
	// No new session while draining.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	_, err = loadgen.Dial(ctx, h.api, loadgen.NewBusSignaler(h.bc, "node1"), loadgen.ClientConfig{Room: "r", Identity: "c", Subscribe: true})
	cancel()
	if bus.StatusOf(err) != bus.StatusUnavailable {
		t.Fatalf("join while draining: %v", err)
	}
	// a moves (leaves); b's client never does: the node closes it after
	// the period and the grace, and is then empty.
	clients[0].Close()
	select {
	case <-h.s.drain.empty:
	case <-time.After(400*time.Millisecond + drainGrace + 5*time.Second):
		t.Fatalf("node not empty: %d sessions", h.s.Sessions())
	}
	if d := time.Since(start); d < 400*time.Millisecond+drainGrace {
		t.Errorf("b closed %v after the drain, before the period and grace", d)
	}
	if v := testutilCounter(h.s.m.drainForced); v != 1 {
		t.Errorf("forced leaves %v", v)
	}
	if v := testutilCounter(h.s.m.drainRejoins); v != 2 {
		t.Errorf("drain rejoins %v", v)
	}
	h.s.Drain(0) // a second drain does nothing
	if v := testutilCounter(h.s.m.drains); v != 1 {
		t.Errorf("drains %v", v)
	}
}
