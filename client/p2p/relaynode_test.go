package p2p

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/traverse-rtc/traverse/client/nat"
)

// The relay message and the new candidate kinds are checked like the
// other signaling messages: a peer cannot make this side bind more than
// maxRelayNodes nodes, oversized grants, or unusable addresses.
func TestRelayMessageLimits(t *testing.T) {
	node := func(i int) string { return `{"id":"n","a":"198.51.100.4:` + string(rune('1'+i)) + `000","g":"AAEC"}` }
	var many []string
	for i := range maxRelayNodes + 1 {
		many = append(many, node(i%8))
	}
	big := `"` + strings.Repeat("A", (maxGrant+8)*4/3) + `"`
	for _, c := range []struct {
		msg string
		ok  bool
	}{
		{`{"t":"relay","rn":{"n":[` + node(0) + `]}}`, true},
		{`{"t":"relay","rn":{"n":[]}}`, true},
		{`{"t":"relay"}`, false},
		{`{"t":"relay","rn":{"n":[` + strings.Join(many, ",") + `]}}`, false},
		{`{"t":"relay","rn":{"n":[{"id":"n","a":"198.51.100.4:3490","g":` + big + `}]}}`, false},
		{`{"t":"relay","rn":{"n":[{"id":"n","a":"198.51.100.4:3490"}]}}`, false},
		{`{"t":"relay","rn":{"n":[{"id":"n","a":"0.0.0.0:3490","g":"AAEC"}]}}`, false},
		{`{"t":"relay","rn":{"n":[{"id":"n","a":"224.0.0.1:3490","g":"AAEC"}]}}`, false},
		{`{"t":"relay","rn":{"n":[{"id":"` + strings.Repeat("x", maxNodeID+1) + `","a":"198.51.100.4:3490","g":"AAEC"}]}}`, false},
		{`{"t":"cand","c":[{"a":"192.0.3.1:40000","k":"mapped"}]}`, true},
		{`{"t":"cand","c":[{"a":"192.0.3.1:40000","k":"mapped","seq":1}]}`, false},
		{`{"t":"cand","c":[{"a":"198.51.100.4:3490","k":"relay-node","tr":"udp"}]}`, false},
		{`{"t":"cand","c":[{"a":"198.51.100.4:3490","k":"relay-node"}]}`, true},
	} {
		_, err := decodeMessage([]byte(c.msg))
		if (err == nil) != c.ok {
			t.Errorf("%.80s: err %v, want ok %t", c.msg, err, c.ok)
		}
		if err != nil && !errors.Is(err, ErrSignal) {
			t.Errorf("%.80s: %v is not ErrSignal", c.msg, err)
		}
	}
}

// SignalRelayNodes speaks signal's POST /relay/nodes: the token as a
// bearer, the request as JSON; a refusal or an oversized answer is an
// error, not an offer.
func TestSignalRelayNodes(t *testing.T) {
	var got RelayNodeRequest
	mode := "ok"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/relay/nodes" || r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, "bad request line", http.StatusBadRequest)
			return
		}
		b, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(b, &got); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		switch mode {
		case "limit":
			http.Error(w, "slow down", http.StatusTooManyRequests)
		case "big":
			_, _ = w.Write([]byte(`{"session":"` + strings.Repeat("a", maxRelayAnswer) + `"}`))
		default:
			_, _ = w.Write([]byte(`{"session":"ab","nodes":[{"id":"n0","addr":"198.51.100.4:3490","grants":["AA","AQ"]}]}`))
		}
	}))
	defer srv.Close()
	f := SignalRelayNodes(strings.Replace(srv.URL, "http://", "ws://", 1)+"/p2p", "tok", srv.Client())
	req := RelayNodeRequest{Peer: "bob", Self: RelayNodePeer{Region: "eu", NAT: RelayNodeNAT{NAT: true, Mapping: nat.EndpointIndependent,
		Filtering: nat.AddressDependent}, Addrs: []string{"203.0.113.7:4100"}}}
	off, err := f(context.Background(), req)
	if err != nil || len(off.Nodes) != 1 || off.Nodes[0].Addr != "198.51.100.4:3490" || off.Nodes[0].Grants[1] != "AQ" {
		t.Fatalf("offer %+v, %v", off, err)
	}
	if got.Peer != "bob" || got.Self.NAT.Filtering != nat.AddressDependent || got.Self.Addrs[0] != "203.0.113.7:4100" {
		t.Fatalf("server got %+v", got)
	}
	// The JSON is signal's: {"nat":{"nat":true,"udp_blocked":false,"mapping":"endpoint-independent",...}}.
	b, _ := json.Marshal(req.Self.NAT)
	if !strings.Contains(string(b), `"mapping":"endpoint-independent"`) || !strings.Contains(string(b), `"nat":true`) {
		t.Fatalf("nat JSON %s", b)
	}
	for _, m := range []string{"limit", "big"} {
		mode = m
		if _, err := f(context.Background(), req); err == nil {
			t.Errorf("%s: no error", m)
		}
	}
}
