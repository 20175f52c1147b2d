package p2plab

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/stun"
	"github.com/traverse-rtc/traverse/internal/turn"
)

// ServeHelper serves the lab's STUN (RFC 5780, two addresses) and TURN
// (UDP, TCP, TLS) servers when HelperEnv is set, until stdin closes, and
// reports true; it reports false at once otherwise. A program that
// StartServers re-executes calls it first thing.
func ServeHelper() (bool, error) {
	v := os.Getenv(HelperEnv)
	if v == "" {
		return false, nil
	}
	a0s, a1s, _ := strings.Cut(v, ",")
	a0, err := netip.ParseAddr(a0s)
	if err != nil {
		return true, err
	}
	a1, err := netip.ParseAddr(a1s)
	if err != nil {
		return true, err
	}
	st, err := stun.New(stun.Config{Listen: netip.AddrPortFrom(a0, stunPort), OtherAddress: a1, Readers: 1,
		Registerer: prometheus.NewRegistry()})
	if err != nil {
		return true, err
	}
	tu, err := turn.New(turn.Config{Listen: netip.AddrPortFrom(a0, turnPort), TLSListen: netip.AddrPortFrom(a0, tlsPort),
		Realm: realm, Users: map[string]string{turnUser: turnPass}, Registerer: prometheus.NewRegistry(),
		AllocationRate: -1, UnauthAnswerRate: -1})
	if err != nil {
		st.Close()
		return true, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 2)
	go func() { errc <- st.Run(ctx) }()
	go func() { errc <- tu.Run(ctx) }()
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	cancel()
	return true, errorsJoin(<-errc, <-errc)
}

func errorsJoin(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
