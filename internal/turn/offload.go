package turn

import (
	"net/netip"
	"time"
)

// Offloader moves channel-bound flows of UDP clients into a kernel fast
// path (internal/turn/turnoffload: a tc eBPF program). The server installs
// a flow when its channel is bound, updates its deadline whenever the
// channel, the peer's permission or the allocation is refreshed, and
// removes it when any of them expires or is deleted. Whatever the kernel
// does not carry (no entry, past the deadline, anything but ChannelData and
// the bound peer's datagrams) still reaches the server's sockets, so an
// Offloader that fails or is slow loses nothing.
type Offloader interface {
	// Install adds f (both directions), or updates its deadline: the
	// kernel relays f's packets until then and hands later ones to user
	// space. An error leaves f in user space.
	Install(f OffloadFlow, deadline time.Time) error
	// Remove uninstalls f. Removing a flow not installed is no error.
	Remove(f OffloadFlow) error
	// Counters returns what the kernel relayed for an installed f so far,
	// each direction: packets and data bytes as the server counts them.
	Counters(f OffloadFlow) (toPeer, toClient OffloadCounts, err error)
}

// OffloadFlow is one channel of one allocation of a UDP client: ChannelData
// from Client to Listen on Channel goes from Relayed to Peer, and Peer's
// datagrams to Relayed go to Client from Listen, framed on Channel.
type OffloadFlow struct {
	Client, Listen, Relayed, Peer netip.AddrPort
	Channel                       uint16
}

// OffloadCounts are one direction's kernel counters.
type OffloadCounts struct {
	Packets, Bytes uint64
}
