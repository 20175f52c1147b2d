#!/usr/bin/env bash
# Seed D's fan-out, 1 -> 1 and 1 -> 16 of 200-byte RTP on loopback:
# traverse distribute's kernel path (--path ebpf: a tc program on the
# namespace's lo, bpf_clone_redirect per receiver) and its batched
# user-space path (--path userspace) against bench/udpfwd, a plain batched
# Go forwarder (recvmmsg/sendmmsg, a map lookup, nothing else), driven by
# the same bench/distload sender and receivers. Each
# server runs in a network namespace of its own (lo only), one after the
# other, ROUNDS times with the order rotating.
#
# Cost is counted for the whole machine, as the TURN offload benchmark
# does: the server's CPU + the driver's (sender's and receivers' system
# calls, the same for both servers) + softirq time on every CPU and the
# ksoftirqd threads, per delivered copy. Softirq time of anything else
# running on the machine is counted too: the figure is conservative.
#
# Usage: sudo bench/distribute-vs-udpfwd.sh [PPS] [SECONDS]
#   defaults: 5000 packets/s from the sender, 5 s per run.
#   ROUNDS=N (default 3); FANS="1 16"; MODES="ebpf userspace udpfwd".
# Run it under the shared lock: flock /tmp/traverse-bench.lock bench/...
set -euo pipefail
pps=${1:-5000}; secs=${2:-5}
rounds=${ROUNDS:-3}; fans=(${FANS:-1 16}); modes=(${MODES:-ebpf userspace udpfwd})
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)"; exit 1; }
work=$(mktemp -d)
pids=(); nss=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for n in "${nss[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
go build -o "$work/traverse" ./cmd/traverse
go build -o "$work/udpfwd" ./bench/udpfwd
go build -o "$work/distload" ./bench/distload

declare -A spid ns
for m in "${modes[@]}"; do
  n=trv-distbench-$m-$$; ip netns add "$n"; nss+=("$n"); ns[$m]=$n
  ip -n "$n" link set lo up
  case $m in
  ebpf|userspace)
    ip netns exec "$n" "$work/traverse" distribute --path $m --listen 127.0.0.1:5004 --api 127.0.0.1:8095 --api-token bench \
      --admin "" --allow-loopback-receivers --rtcp-timeout -1s --max-receivers 64 --log-level warn 2>"$work/$m.log" & ;;
  udpfwd)
    ip netns exec "$n" "$work/udpfwd" -mode server -listen 127.0.0.1:5004 2>"$work/$m.log" & ;;
  *) echo "unknown mode $m"; exit 1 ;;
  esac
  spid[$m]=$!; pids+=($!)
done
for m in "${modes[@]}"; do
  for i in $(seq 100); do ip netns exec "${ns[$m]}" ss -Hlnu "sport = :5004" | grep -q . && break; sleep 0.05; done
  kill -0 "${spid[$m]}" 2>/dev/null || { echo "$m did not start:"; cat "$work/$m.log"; exit 1; }
done

run() { # mode fan round
  local m=$1 f=$2 r=$3 extra="" dm=$1
  # distribute keeps the stream of the previous run: remove it first (the
  # API answers 404 the first time).
  if [ "$m" != udpfwd ]; then
    dm=distribute
    ip netns exec "${ns[$m]}" curl -s -o /dev/null -H 'Authorization: Bearer bench' \
      -d '{"op":"remove_stream","dst":"127.0.0.1:5004"}' http://127.0.0.1:8095/v1/distribute || true
    extra="-api http://127.0.0.1:8095 -token bench"
  else
    # udpfwd keeps its members: restart it for a clean room.
    kill "${spid[$m]}"; wait "${spid[$m]}" 2>/dev/null || true
    ip netns exec "${ns[$m]}" "$work/udpfwd" -mode server -listen 127.0.0.1:5004 2>"$work/$m.log" & spid[$m]=$!; pids+=($!)
    for i in $(seq 100); do ip netns exec "${ns[$m]}" ss -Hlnu "sport = :5004" | grep -q . && break; sleep 0.05; done
  fi
  ip netns exec "${ns[$m]}" "$work/distload" -mode "$dm" -target 127.0.0.1:5004 $extra -server-pid "${spid[$m]}" \
    -fan "$f" -pps "$pps" -duration "${secs}s" >"$work/out"
  python3 - "$m" "$f" "$r" "$work/out" <<'PY' | tee -a "$work/results"
import json, sys
m, f, r, path = sys.argv[1:]
d = json.load(open(path))
print(f"{m} {f} {r} {d.get('server_us_per_copy', 0):.3f} {d.get('whole_us_per_copy', 0):.3f} {d['delivered']} {d['expected']} {d.get('server_and_softirq_us_per_copy', 0):.3f}")
PY
}

echo "# mode fan round server_us/copy whole_us/copy delivered expected server+softirq_us/copy   ($pps pkt/s, ${secs}s, 200-byte RTP)"
for r in $(seq "$rounds"); do
  for f in "${fans[@]}"; do
    k=${#modes[@]}
    for i in $(seq 0 $((k-1))); do run "${modes[$(( (i + r - 1) % k ))]}" "$f" "$r"; done
  done
done
echo "# medians (us of CPU per delivered copy): server process; server + softirq + ksoftirqd; whole machine (+ the driver's sender and receivers)"
python3 - "$work/results" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for l in open(sys.argv[1]):
    m, f, r, s, w, d, e, q = l.split()
    rows[(m, int(f))].append((float(s), float(w), 1 - int(d) / max(int(e), 1), float(q)))
for (m, f), v in sorted(rows.items(), key=lambda x: (x[0][1], x[0][0])):
    print(f"{m:10s} 1->{f:<3d} server {statistics.median(x[0] for x in v):7.3f}  server+softirq {statistics.median(x[3] for x in v):7.3f}  whole {statistics.median(x[1] for x in v):7.3f}  loss {max(x[2] for x in v):.4f}")
PY
