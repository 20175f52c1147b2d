// Package kfast is traverse's kernel fast path: tc eBPF programs that
// carry established UDP flows below the socket layer, and the one loader
// they all share. The programs live beside it, each a small package:
//
//   - kfast/mediaflow: the media proxy's latched RTP flows (sipgw
//     --offload ebpf), a mediaproxy.Offloader;
//   - kfast/turnchannel: the TURN server's channel-bound flows (turn
//     --offload ebpf), a turn.Offloader.
//
// # The C side (bpf/, include/)
//
// Every program is a file of bpf/ (mediaflow.c, turnchannel.c), included
// by bpf/kfast.c and compiled into one object (kfast_bpfel.o, generated
// by bpf2go and committed; see gen.go). include/kfast.h parses Ethernet +
// IPv4 + UDP (kf_parse_udp4: no options, no fragments, consistent lengths,
// no GSO, else the packet is handed on untouched), defines the tuple
// (struct kf_tuple) and the head of every map value (struct kf_out:
// rewritten tuple, egress interface, counter slot, deadline, largest IP
// length), the per-CPU counter slots (map "counters", kf_count), the
// deadline check (kf_live), the checksum updates of a rewrite (kf_pseudo,
// kf_ip_update, and kf_l4_update through bpf_l4_csum_replace, which
// handles CHECKSUM_PARTIAL skbs and keeps a zero UDP checksum zero),
// writing the new tuple (kf_write_tuple) and sending the packet on
// (kf_send: bpf_redirect_neigh out of the egress interface, or up the
// stack when both ends are local). include/csum.h is the one's complement
// arithmetic (RFC 1071, RFC 1624); include/move.h moves a payload within
// the packet (for programs that add or strip a header). A program is its
// lookup and the rewrite of its own payload between kf_parse_udp4 and
// kf_send.
//
// # The Go side (Loader, Table)
//
// Load loads one program of the object with only the maps it uses, sized
// by Config (its own by name, the counters by Config.Slots); Attach puts it
// on the ingress of an interface the first time a flow needs it (TCX from
// Linux 6.6, a direct-action clsact filter before that or when
// Config.Clsact forces it); Route finds the interface the host sends an
// address out of; Slots and Release hand out counter slots (one scheme
// for every program: a per-CPU array with a free list, zeroed when handed
// out) and Read sums one; Deadline converts a time to the programs' clock;
// Close detaches and frees everything. V4 unmaps IPv4-mapped IPv6
// addresses, TupleOf and Route.To build the map entries. The Loader is not
// safe for concurrent use: Table, which every offloader embeds, holds it
// behind one lock with the offloader's flows (FlowConfig: NetNS, MaxFlows,
// Clsact) and gives the offloader Flows, Attachments and Close.
//
// Tests: package kfasttest (lab, packet builder, checksum oracle,
// BPF_PROG_TEST_RUN runner, and the conformance suite every offloader
// runs). docs/fastpath.md has the whole picture.
package kfast
