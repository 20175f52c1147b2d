// Package kfasttest is the test kit of the kernel fast path
// (internal/kfast) and of every offloader beside it:
//
//   - Lab: three network namespaces joined by veth pairs (client, gateway,
//     server), in which offloaders run against real stacks;
//   - Packet: an Ethernet + IPv4 + UDP frame builder, with Sum, Fold and
//     UDPChecksum as the checksum oracle (recomputed from scratch);
//   - Load, Run, Redirected, Benchmark: a program loaded with kfast.Load
//     and run with BPF_PROG_TEST_RUN (prog.Run), table-tested as
//     Tailscale's derp/xdp tests its XDP program;
//   - the conformance suite every offloader runs: Passes (what a program
//     must hand on untouched and not count), CheckRewrite (what a
//     rewritten frame must be), and LabSuite (a flow taken over by the
//     kernel, counted exactly, handed back to user space), run by the eBPF
//     media flows (kfast/mediaflow), the eBPF TURN channels
//     (kfast/turnchannel) and the nftables media flows
//     (mediaproxy/nftoffload);
//   - Call: a media-proxy call across the lab, for the media proxy's
//     offloaders.
package kfasttest
