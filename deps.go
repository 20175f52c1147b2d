//go:build deps

// This file pins the chosen dependencies (see docs/architecture.md) in
// go.mod before every package that uses them exists. It is never built.
package traverse

import (
	_ "github.com/cilium/ebpf"
	_ "github.com/coder/websocket"
	_ "github.com/emiago/sipgo"
	_ "github.com/google/nftables"
	_ "github.com/klauspost/reedsolomon"
	_ "github.com/nats-io/nats-server/v2/server"
	_ "github.com/nats-io/nats.go"
	_ "github.com/pion/interceptor"
	_ "github.com/pion/rtcp"
	_ "github.com/pion/rtp"
	_ "github.com/pion/sdp/v3"
	_ "github.com/pion/stun/v3"
	_ "github.com/pion/turn/v4"
	_ "github.com/pion/webrtc/v4"
	_ "github.com/vishvananda/netlink"
	_ "github.com/vishvananda/netns"
	_ "go.uber.org/goleak"
	_ "golang.org/x/net/ipv4"
)
