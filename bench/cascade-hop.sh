#!/usr/bin/env bash
# The cascade's node-level benchmark (issue 13, docs/cascade.md "Figures"):
# one real "traverse sfu" process, its CPU (utime+stime from
# /proc/PID/stat) per packet out, in one run:
#   hop     the node as a cascade hop: relay messages in from node A, each
#           forwarded once to each of LO (then HI) next-hop nodes;
#   webrtc  the node forwarding the same stream (a relay client publishing
#           PPS VP8 packets of 1,000 bytes) to LO (then HI) pion WebRTC
#           subscribers with browser-like RTCP;
# each mode at both fan-outs, the same input rate: the average CPU per
# packet out at each, and the slope between them (the CPU one more next
# hop / subscriber adds per packet out) with the fixed cost per packet in.
# ROUNDS rounds of SECONDS per phase (4 phases a round), medians and the
# hop/webrtc ratios, average and marginal (goal: hop <= half a WebRTC
# subscriber); then the latency one hop adds on loopback, p50 and p99
# (goal: p99 < 200 us).
# It is cmd/traverse TestCascadeHopCost, which plays node A, the next hops
# and the controller itself (pushing the node's routes over the bus).
#
# Three modes: hop (each of A's messages its own datagram, as the webrtc
# mode's publisher sends), hop-batch (each burst of A's as one UDP GSO run,
# as an upstream relay endpoint sends: the cascade's own shape) and webrtc;
# both hop modes' ratios to webrtc, and the latency through the node under
# each hop mode's load.
#
# Usage: bench/cascade-hop.sh [PPS] [LO,HI] [SECONDS] [ROUNDS] [TRACKS]
#   defaults: 2000, 2,8, 5, 3, 1 (about 2 minutes). TRACKS: the input is
#   that many publishers' tracks, round robin, PPS in all (a cascade-shaped
#   load: bench/cascade-hop.sh 10000 2,8 5 3 10). Runs under
#   flock -o /tmp/traverse-bench.lock so that no two benchmarks overlap.
#   BENCH_LATENCY_ONLY=1: only the latency phase (BENCH_LAT_SAMPLES,
#   default 20,000, one per BENCH_LAT_GAP_US, default 500; p50, p99 and
#   p999 from the kernel's arrival stamps, the direct path's beside).
#   BENCH_PROFILE=FILE: the node's CPU profile (--pprof) over the last
#   round's hop phase at HI (BENCH_PROFILE_MODE=webrtc: the webrtc phase) to FILE.
#   Each phase also reports the node's wake-ups (context switches, all its
#   threads, /proc/PID/task/*/status) per packet in. BENCH_NODE_ENV="VAR=V ..."
#   (e.g. GOMAXPROCS=1) and BENCH_NODE_ARGS="--flag ..." (e.g.
#   --scheduler-poll=false) change the node; BENCH_PHASE_CMD (sh, with PID
#   and PHASE set) runs as each phase begins, for counting tools such as
#   perf stat (docs/cascade.md, "Wake-ups and system calls per packet in").
set -euo pipefail
cd "$(dirname "$0")/.."
export TRAVERSE_CASCADE_BENCH=1 BENCH_PPS=${1:-2000} BENCH_FANOUTS=${2:-2,8} BENCH_SECONDS=${3:-5} BENCH_ROUNDS=${4:-3} BENCH_TRACKS=${5:-1}
flock -o /tmp/traverse-bench.lock timeout 600 go test -count=1 -p 1 -run '^TestCascadeHopCost$' -v ./cmd/traverse/ 2>&1 |
  grep -E 'round [0-9]+:|SUMMARY|FAIL|ok|PASS'
