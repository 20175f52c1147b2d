#!/usr/bin/env bash
# The latency one cascade relay hop adds on loopback (issue 13's goal:
# p99 < 200 us), side by side in one run with two forwarders that are not
# traverse, measured the same way (docs/cascade.md, "Latency per hop"):
#   traverse hop  one "traverse sfu" process forwarding relay frames from
#                 node A to a next hop L (open, route, seal, sendmmsg);
#   udpfwd        bench/udpfwd, a plain batched Go UDP forwarder
#                 (recvmmsg/sendmmsg, no crypto), A and L in one room;
#   rtpengine     rtpengine 10.5 in user space (--table=-1) forwarding one
#                 call's RTP from A to L, set up over its ng protocol.
# Every sample is sent twice: through one forwarder to its receiver, then
# straight to a direct receiver D; both receivers take the kernel's
# arrival stamp (SO_TIMESTAMPNS); added = forwarded - direct. The three
# forwarders take turns, one sample every GAP_US (so each gets one every
# 3 x GAP_US, as slept), with the same datagram size (the peers forward RTP packets
# as long as the hop's relay frame, about 1,060 bytes). Reported per
# forwarder: added p50, p99, p999 (and per sample), the load average
# before and after, and traverse's added latency over each peer's.
# It is cmd/traverse TestCascadeHopCost's latency phase with
# BENCH_LAT_PEERS=udpfwd,rtpengine (one implementation of the stamping).
#
# Usage: bench/hop-latency-vs-peers.sh [SAMPLES] [GAP_US]
#   defaults: 20000 samples per forwarder, one sample every 500 us asked
#   (a short sleep lasts about 1.2 ms here: about 70 s of samples, under
#   2 minutes in all). PEERS=udpfwd runs without rtpengine
#   (Debian package rtpengine-daemon). BENCH_NODE_ARGS: more flags for
#   the traverse node, e.g. an A/B of its scheduler poll:
#   BENCH_NODE_ARGS=--scheduler-poll=false bench/hop-latency-vs-peers.sh
#   BENCH_NODE_ENV: environment for the node alone (e.g. GOMAXPROCS=1).
#   BENCH_LAT_TRACE=FILE: the node's runtime trace of the first 8 s of
#   samples (BENCH_LAT_TRACE_SECONDS), for go tool trace.
#   Runs under
#   flock -o /tmp/traverse-bench.lock (do not wrap it in another flock).
set -euo pipefail
cd "$(dirname "$0")/.."
peers=${PEERS:-udpfwd,rtpengine}
case ",$peers," in *,rtpengine,*)
	command -v rtpengine >/dev/null || { echo "rtpengine not installed (Debian package rtpengine-daemon)"; exit 1; } ;;
esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/udpfwd" ./bench/udpfwd
export TRAVERSE_CASCADE_BENCH=1 BENCH_LATENCY_ONLY=1 BENCH_LAT_PEERS=$peers BENCH_UDPFWD=$tmp/udpfwd \
	BENCH_LAT_SAMPLES=${1:-20000} BENCH_LAT_GAP_US=${2:-500}
flock -o /tmp/traverse-bench.lock timeout 600 go test -count=1 -p 1 -run '^TestCascadeHopCost$' -v ./cmd/traverse/ 2>&1 |
	grep -E 'SUMMARY|FAIL|ok|PASS|rtpengine|udpfwd'
