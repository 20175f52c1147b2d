package p2p_test

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/traverse-rtc/traverse/client/p2p"
)

// Two peers in one process, introduced by an in-process signaling pipe
// (a real application uses DialSignal and AcceptSignal), connect directly
// on loopback and exchange a datagram.
func Example() {
	alice, bob := p2p.Pipe("alice", "bob")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	local := p2p.WithLocal(netip.MustParseAddrPort("127.0.0.1:0"))

	done := make(chan *p2p.Conn)
	go func() {
		c, err := p2p.Connect(ctx, bob, local)
		if err != nil {
			fmt.Println(err)
		}
		done <- c
	}()
	a, err := p2p.Connect(ctx, alice, local, p2p.OnPathChange(func(ch p2p.PathChange) {
		fmt.Println("alice's path:", ch.To.Kind, "("+ch.Reason+")")
	}))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer a.Close()
	b := <-done
	if b == nil {
		return
	}
	defer b.Close()

	if err := a.WriteDatagram([]byte("hello bob")); err != nil {
		fmt.Println(err)
	}
	p, err := b.ReadDatagram(ctx)
	fmt.Println(string(p), err)
	// Output:
	// alice's path: direct (first)
	// hello bob <nil>
}
