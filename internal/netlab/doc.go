// Package netlab builds small networks out of Linux network namespaces to
// test NAT traversal against real kernels: hosts, an "internet" and NATs
// that reproduce each behaviour RFC 4787 names (section 4.1 mapping,
// section 5 filtering), joined by veth links that can lose packets and be
// rate-limited.
//
// Every node is a named network namespace (/run/netns/tl-LAB-NODE), so that
// third-party binaries run inside it (Node.Command) and "ip netns exec" works
// for debugging. The lab's internet is a namespace holding a bridge
// (203.0.113.0/24); a NAT holds a bridge for its private side
// (10.K.0.0/24, or a public 198.51.100.0/28 block for a plain router). No
// link leads to the root namespace, so nothing in the lab can reach a real
// network.
//
// NATs are nftables rules in the NAT's namespace (see Kind for how each
// behaviour is made); links lose packets through a netdev-family
// "numgen random" rule and are rate-limited with a tbf qdisc, both set
// through netlink (package github.com/google/nftables and
// github.com/vishvananda/netlink): nothing shells out to ip or nft.
//
// A lab built by New is torn down by the test's Cleanup, also when the test
// fails; Clean removes what a crashed process left behind. See docs/netlab.md.
package netlab
