#!/usr/bin/env bash
# The cascade's node-level benchmark (issue 13, docs/cascade.md "Figures"):
# one real "traverse sfu" process, its CPU (utime+stime from
# /proc/PID/stat) per packet out, in one run:
#   hop     the node as a cascade hop: relay messages in from node A, each
#           forwarded once to each of SUBSCRIBERS next-hop nodes;
#   webrtc  the node forwarding the same stream (a relay client publishing
#           PPS VP8 packets of 1,000 bytes) to SUBSCRIBERS pion WebRTC
#           subscribers with browser-like RTCP;
# ROUNDS rounds of SECONDS each, alternating, medians and their ratio
# (goal: hop <= half a WebRTC subscriber's packet); then the latency one
# hop adds on loopback, p50 and p99 (goal: p99 < 200 us).
# It is cmd/traverse TestCascadeHopCost, which plays node A, the next hops
# and the controller itself (pushing the node's routes over the bus).
#
# Usage: bench/cascade-hop.sh [PPS] [SUBSCRIBERS] [SECONDS] [ROUNDS]
#   defaults: 2000, 4, 5, 3 (about a minute). Runs under
#   flock /tmp/traverse-bench.lock so that no two benchmarks overlap.
set -euo pipefail
cd "$(dirname "$0")/.."
export TRAVERSE_CASCADE_BENCH=1 BENCH_PPS=${1:-2000} BENCH_SUBSCRIBERS=${2:-4} BENCH_SECONDS=${3:-5} BENCH_ROUNDS=${4:-3}
flock /tmp/traverse-bench.lock timeout 600 go test -count=1 -p 1 -run '^TestCascadeHopCost$' -v ./cmd/traverse/ 2>&1 |
  grep -E 'round [0-9]+:|SUMMARY|FAIL|ok|PASS'
