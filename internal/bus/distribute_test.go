package bus

import (
	"context"
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/traverse-rtc/traverse/internal/testkit"
)

// FuzzDistributeRequest feeds the distribute messages' decoders: no
// panic, and what decodes survives a round trip.
func FuzzDistributeRequest(f *testing.F) {
	for _, s := range []string{
		`{"op":"add_stream","dst":"0.0.0.0:5004","ssrc":1234,"source":"192.0.2.1","receivers":["198.51.100.1:6000","[2001:db8::1]:6000"]}`,
		`{"op":"remove_stream","dst":"0.0.0.0:5004"}`,
		`{"op":"add_receivers","dst":"0.0.0.0:5004","receivers":["198.51.100.1:6000"]}`,
		`{"op":"remove_receivers","dst":"[::]:5004","ssrc":0,"receivers":["198.51.100.1:6000"]}`,
		`{"op":"list"}`, `{"node":"d1","streams":[{"dst":"0.0.0.0:5004"}]}`, `{"node":"d1","error":{"status":"not_found","message":"x"}}`,
		`{"op":"add_stream","dst":"1.2.3.4:0"}`, `{"op":"add_stream","dst":"x"}`, `{"op":"add_receivers","dst":"1.2.3.4:5"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		check[DistributeRequest](t, b)
		check[DistributeReply](t, b)
	})
}

func TestDistributeRequestValidate(t *testing.T) {
	dst := netip.MustParseAddrPort("192.0.2.1:5004")
	rcv := []netip.AddrPort{netip.MustParseAddrPort("198.51.100.1:6000")}
	many := make([]netip.AddrPort, MaxDistributeReceivers+1)
	for i := range many {
		many[i] = rcv[0]
	}
	for _, tc := range []struct {
		r  DistributeRequest
		ok bool
	}{
		{DistributeRequest{Op: DistributeList}, true},
		{DistributeRequest{Op: DistributeAddStream, Dst: dst}, true},
		{DistributeRequest{Op: DistributeAddStream, Dst: dst, Receivers: rcv, Source: netip.MustParseAddr("192.0.2.9")}, true},
		{DistributeRequest{Op: DistributeAddReceivers, Dst: dst, Receivers: rcv}, true},
		{DistributeRequest{Op: DistributeAddReceivers, Dst: dst}, false},
		{DistributeRequest{Op: DistributeRemoveStream, Dst: dst, Receivers: rcv}, false},
		{DistributeRequest{Op: DistributeRemoveReceivers, Dst: dst, Receivers: rcv, Source: netip.MustParseAddr("192.0.2.9")}, false},
		{DistributeRequest{Op: DistributeAddStream}, false},
		{DistributeRequest{Op: DistributeAddStream, Dst: netip.AddrPortFrom(dst.Addr(), 0)}, false},
		{DistributeRequest{Op: DistributeAddStream, Dst: dst, Receivers: []netip.AddrPort{{}}}, false},
		{DistributeRequest{Op: DistributeAddStream, Dst: dst, Receivers: many}, false},
		{DistributeRequest{Op: "drop_table", Dst: dst}, false},
	} {
		if err := tc.r.Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v: Validate = %v, want ok %v", tc.r, err, tc.ok)
		}
	}
}

// A distribute node serves its own requests from signal and nothing
// else: it cannot take another node's requests nor publish anywhere.
func TestDistributePermissions(t *testing.T) {
	e, signal, node := startBus(t, "n1")
	d, err := Connect(Config{URLs: []string{e.URL()}, Name: "distribute", Identity: mustIdentity(t, e, RoleDistribute, "d1")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	var bad int
	h := func(req DistributeRequest) (DistributeReply, error) {
		if req.Op == DistributeRemoveStream {
			return DistributeReply{}, Errorf(StatusNotFound, "no stream %v", req.Dst)
		}
		return DistributeReply{Streams: json.RawMessage(`[]`)}, nil
	}
	if _, err := d.HandleDistribute("d1", h, func(error) { bad++ }); err != nil {
		t.Fatal(err)
	}
	rep, err := signal.Distribute(context.Background(), "d1", DistributeRequest{Op: DistributeList})
	if err != nil || string(rep.Streams) != "[]" || rep.Node != "d1" {
		t.Fatalf("list: %+v, %v", rep, err)
	}
	_, err = signal.Distribute(context.Background(), "d1", DistributeRequest{Op: DistributeRemoveStream, Dst: netip.MustParseAddrPort("192.0.2.1:5004")})
	if StatusOf(err) != StatusNotFound {
		t.Fatalf("remove: %v, want not_found", err)
	}
	// A malformed request is answered bad_request and counted.
	m, err := signal.Conn().Request(DistributeSubject("d1"), []byte(`{"op":"add_stream","dst":"nonsense"}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if rep, err := Decode[DistributeReply](m.Data); err != nil || rep.Error == nil || rep.Error.Status != StatusBadRequest || bad != 1 {
		t.Fatalf("bad request answered %+v, %v (counted %d)", rep, err, bad)
	}
	// The node may not serve d2's requests, nor publish a request itself.
	if _, err := d.HandleDistribute("d2", h, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := signal.Distribute(ctx, "d2", DistributeRequest{Op: DistributeList}); StatusOf(err) != StatusUnavailable {
		t.Fatalf("d1 served d2's request: %v", err)
	}
	got := make(chan *nats.Msg, 1)
	if _, err := node.Conn().ChanSubscribe(NodeRPCSubject("n1"), got); err == nil {
		_ = node.Conn().Flush()
		_ = d.Conn().Publish(NodeRPCSubject("n1"), []byte(`{}`))
		_ = d.Conn().Flush()
		select {
		case <-got:
			t.Error("the distribute node published on an SFU node's subject")
		case <-time.After(testkit.SilenceWindow):
		}
	}
	testkit.Eventually(5*time.Second, func() bool { return d.Refused() != 0 })
	if d.Refused() == 0 {
		t.Error("the refused subscription and publish were not reported")
	}
}
