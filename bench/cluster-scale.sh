#!/usr/bin/env bash
# The scale run of issue 12: traverse load against three SFU processes on
# this machine (one bus, one signal, three sfu, started by
# deploy/local-cluster.sh as plain processes), audio-only rooms of 4.
# Reports participants connected, join time p50/p99, placement per node
# (balanced within 10 % of the mean or not), and resident memory per
# participant (RSS of the three SFU processes at the end of the media
# window / participants), plus the SFUs' CPU over the run.
#
# Usage: bench/cluster-scale.sh [PARTICIPANTS] [SECONDS]
#   defaults: 1000 participants (250 rooms of 4), 10 s of media once all joined.
#   ROOM=4 participants per room; PARALLEL=16 joins in flight;
#   TRAVERSE=path of the binary (default: built into the state directory).
# Bounded: joins have their own timeouts, media lasts SECONDS, and the whole
# run is cut at 10 minutes. Run it under the shared lock:
#   flock /tmp/traverse-bench.lock bench/cluster-scale.sh
set -euo pipefail
participants=${1:-1000}; secs=${2:-10}
room=${ROOM:-4}; parallel=${PARALLEL:-16}
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/traverse-scale.XXXXXX)
bin=${TRAVERSE:-$work/traverse}
if [ -z "${TRAVERSE:-}" ]; then
  CGO_ENABLED=0 go build -o "$bin" ./cmd/traverse
fi
export CLUSTER_DIR=$work/cluster CLUSTER_BIN=$bin CLUSTER_BUS_NODES=1 CLUSTER_SIGNALS=1 CLUSTER_EXTRAS=0 CLUSTER_LOG_LEVEL=warn
export CLUSTER_SIGNAL_ARGS="--max-conns-per-addr $((participants + 100)) --node-capacity $participants"
export CLUSTER_SFU_ARGS="--max-peers $participants"
cleanup() { deploy/local-cluster.sh down >/dev/null 2>&1 || true; }
trap cleanup EXIT
deploy/local-cluster.sh up
# shellcheck disable=SC1091
. "$CLUSTER_DIR/endpoints.env"

rooms=$(( (participants + room - 1) / room ))
sfu_pids=()
for n in n1 n2 n3; do read -r p _ <"$CLUSTER_DIR/pids/sfu-$n.pid"; sfu_pids+=("$p"); done
cpu() { local t=0 p f; for p in "${sfu_pids[@]}"; do f=($(cut -d' ' -f14,15 "/proc/$p/stat")); t=$((t + f[0] + f[1])); done; echo "$t"; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
sessions() { curl -fs "http://$1/metrics" | awk '$1 == "traverse_sfu_sessions" {print $2}'; }

# Sample RSS and sessions each second while load runs; keep the peak.
sampler() {
  local peak_rss=(0 0 0) peak_s=(0 0 0) i r s
  while [ ! -e "$work/stop" ]; do
    for i in 0 1 2; do
      r=$(rss "${sfu_pids[i]}"); s=$(sessions "$(eval echo "\$ADMIN_sfu_n$((i + 1))")")
      s=${s%.*}
      ((r > peak_rss[i])) && peak_rss[i]=$r
      ((${s:-0} > peak_s[i])) && peak_s[i]=${s:-0}
    done
    echo "${peak_rss[*]} ${peak_s[*]}" >"$work/peaks"
    sleep 1
  done
}
sampler & sampler_pid=$!
cpu0=$(cpu); t0=$(date +%s.%N)
key=$(cat "$TOKEN_KEY_FILE")
set +e
timeout 600 "$bin" load --url "${SIGNAL_WS%% *}" --token-key "$key" --rooms "$rooms" --publishers "$room" --subscribers 0 \
  --video-bitrate -1 --duration "${secs}s" --parallel "$parallel" --json >"$work/load.json" 2>"$work/load.log"
rc=$?
set -e
cpu1=$(cpu); t1=$(date +%s.%N)
touch "$work/stop"; wait "$sampler_pid" || true
[ $rc = 0 ] || { tail -5 "$work/load.log"; echo "traverse load failed ($rc)"; exit 1; }
read -r r1 r2 r3 s1 s2 s3 <"$work/peaks"
placed=$(curl -fs "http://$ADMIN_signal_1/metrics" | awk -F'[{}" ]' '/^traverse_signal_placements_total\{/ {print $3"="$NF}' | tr '\n' ' ')
hz=$(getconf CLK_TCK)
python3 - "$work/load.json" "$r1" "$r2" "$r3" "$s1" "$s2" "$s3" "$cpu0" "$cpu1" "$t0" "$t1" "$hz" "$placed" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
rss = [int(x) for x in sys.argv[2:5]]; peak = [int(x) for x in sys.argv[5:8]]
cpu0, cpu1, t0, t1, hz = int(sys.argv[8]), int(sys.argv[9]), float(sys.argv[10]), float(sys.argv[11]), int(sys.argv[12])
placed = dict(p.split("=") for p in sys.argv[13].split())
placed = {k: int(float(v)) for k, v in placed.items()}
for node in ("n1", "n2", "n3"):
    placed.setdefault(node, 0)
n = s["connected"]
mean = sum(placed.values()) / max(len(placed), 1)
spread = max(abs(v - mean) / mean for v in placed.values()) if mean else 1
print(f"participants {s['peers']} ({s['rooms']} rooms of {s['publishers_per_room']}, audio only), connected {n}, failed {s['join_failures']}")
print(f"join (to connected) p50 {s['join_p50_ms']:.0f} ms, p95 {s['join_p95_ms']:.0f} ms, p99 {s['join_p99_ms']:.0f} ms")
print(f"placements per node {placed}: largest deviation from the mean {100*spread:.1f} % ({'within' if spread <= 0.10 else 'NOT within'} 10 %)")
print(f"sessions per node at peak {peak}")
print(f"media: received {s['packets_per_second']:.0f} of {s['expected_packets_per_second']:.0f} expected pkt/s, loss {100*s['loss_fraction']:.2f} %")
print(f"SFU RSS at peak {[round(r/1024,1) for r in rss]} MiB, total {sum(rss)/1024:.1f} MiB = {sum(rss)/max(n,1):.0f} KiB per participant")
print(f"SFU CPU over the run {(cpu1-cpu0)/hz:.1f} s in {t1-t0:.1f} s ({100*(cpu1-cpu0)/hz/(t1-t0):.0f} % of one core, 3 processes)")
PY
