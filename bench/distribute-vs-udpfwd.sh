#!/usr/bin/env bash
# Media distribution fan-out, 1 -> 1 and 1 -> 16 of 200-byte RTP: traverse
# distribute's kernel path (--path ebpf: a tc program, bpf_clone_redirect
# per receiver) and its batched user-space path (--path userspace) against
# bench/udpfwd, a plain batched Go forwarder (recvmmsg/sendmmsg, a map
# lookup, nothing else), driven by the same bench/distload sender. Every
# server runs in network namespaces of its own, one after the other, ROUNDS
# times with the order rotating, in two topologies (TOPOS):
#
#   veth  the distribution cost itself, as on a real server whose receivers
#         are other machines: sender namespace --veth--> server namespace
#         --veth--> receiver namespace, where an nftables netdev ingress
#         rule counts every copy and drops it before routing or any socket.
#         The receivers' side is the same few instructions per copy for
#         every path, so what differs is the server's share.
#   egress  the same, but the copies are counted and dropped by the queue of
#         the server's veth to 10.0.2.0/24 (pfifo limit 0; a static
#         neighbour) as they leave, before the device (netfilter's egress
#         hook does not see packets redirected by tc, a qdisc does): the distribution
#         cost alone, as a NIC sending to other machines would see it, with
#         no receiving side on this machine at all (the device's own
#         transmit is not counted either; it is the same for every path).
#   lo    everything on the server namespace's lo, 16 receiving sockets in
#         bench/distload: each copy is also delivered to a socket and read
#         by a receiver, work that is the same for every path and, on this
#         topology, most of the total (the figure tells what a box that
#         both distributes and receives pays, not the distribution cost).
#
# Cost is counted for the whole machine, as the TURN offload benchmark
# does: the server's CPU + the driver's (sender's system calls, and on lo
# the receivers' reads, the same for every server) + softirq time on every
# CPU and the ksoftirqd threads, per delivered copy. Softirq time of
# anything else running on the machine is counted too: the figure is
# conservative.
#
# Usage: sudo bench/distribute-vs-udpfwd.sh [PPS] [SECONDS]
#   defaults: 5000 packets/s from the sender, 5 s per run.
#   ROUNDS=N (default 3); FANS="1 16"; MODES="ebpf userspace udpfwd";
#   TOPOS="egress veth lo"; PERF=DIR records a whole-machine profile of
#   each run's measurement (perf record -a -g) into DIR/TOPO-MODE-FAN-ROUND.data.
# Run it under the shared lock: flock /tmp/traverse-bench.lock bench/...
set -euo pipefail
pps=${1:-5000}; secs=${2:-5}
rounds=${ROUNDS:-3}; fans=(${FANS:-1 16}); modes=(${MODES:-ebpf userspace udpfwd}); topos=(${TOPOS:-egress veth lo})
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)"; exit 1; }
. bench/lib/cleanup.sh
on_exit() { [ -z "${KEEP_RAW:-}" ] || cp "$work/raw" "$KEEP_RAW" 2>/dev/null || true; }
go build -o "$work/traverse" ./cmd/traverse
go build -o "$work/udpfwd" ./bench/udpfwd
go build -o "$work/distload" ./bench/distload

declare -A spid ns rns sns addr
serve() { # key mode: start the server of mode in ns[key]
  local k=$1 m=$2 n=${ns[$1]}
  case $m in
  ebpf|userspace)
    local ifs="" allow="--allow-loopback-receivers"
    [ "${rns[$k]}" ] && { ifs="--ebpf-interface vs0"; allow="--allow-receiver 10.0.2.0/24"; }
    ip netns exec "$n" "$work/traverse" distribute --path $m --listen "${addr[$k]}:5004" --api "${addr[$k]}:8095" --api-token bench \
      --admin "" $allow $ifs --rtcp-timeout -1s --unreachable-timeout -1s --max-receivers 64 --log-level warn 2>"$work/$k.log" & ;;
  udpfwd)
    ip netns exec "$n" "$work/udpfwd" -mode server -listen "${addr[$k]}:5004" 2>"$work/$k.log" & ;;
  *) echo "unknown mode $m"; exit 1 ;;
  esac
  spid[$k]=$!; pids+=($!)
  for i in $(seq 100); do ip netns exec "$n" ss -Hlnu "sport = :5004" | grep -q . && break; sleep 0.05; done
  kill -0 "${spid[$k]}" 2>/dev/null || { echo "$k did not start:"; cat "$work/$k.log"; exit 1; }
}
for t in "${topos[@]}"; do
  for m in "${modes[@]}"; do
    k=$t-$m n=trv-db-$t-$m-$$; ip netns add "$n"; nss+=("$n"); ns[$k]=$n
    ip -n "$n" link set lo up
    case $t in
    lo) addr[$k]=127.0.0.1; rns[$k]="" ;;
    egress)
      addr[$k]=10.0.1.1; s=$n-s; ip netns add "$s"; nss+=("$s"); sns[$k]=$s; rns[$k]=egress
      ip link add vs0 netns "$n" type veth peer name vs1 netns "$s"
      ip link add vr0 netns "$n" type veth peer name vr1 netns "$n"
      ip -n "$n" addr add 10.0.1.1/24 dev vs0; ip -n "$s" addr add 10.0.1.2/24 dev vs1
      ip -n "$n" addr add 10.0.2.1/24 dev vr0
      for x in "$n vs0" "$n vr0" "$n vr1" "$s vs1" "$s lo"; do set -- $x; ip -n "$1" link set "$2" up; done
      ip -n "$n" neigh replace 10.0.2.2 lladdr 02:00:00:00:02:02 dev vr0 nud permanent
      ip -n "$s" route add default via 10.0.1.1
      ip netns exec "$n" sysctl -qw net.ipv6.conf.vr0.disable_ipv6=1
      ip -n "$n" link set vr0 txqueuelen 0
      ip netns exec "$n" tc qdisc replace dev vr0 root pfifo limit 0
      ;;
    veth)
      addr[$k]=10.0.1.1; s=$n-s r=$n-r; ip netns add "$s"; ip netns add "$r"; nss+=("$s" "$r"); sns[$k]=$s; rns[$k]=$r
      ip link add vs0 netns "$n" type veth peer name vs1 netns "$s"
      ip link add vr0 netns "$n" type veth peer name vr1 netns "$r"
      ip -n "$n" addr add 10.0.1.1/24 dev vs0; ip -n "$s" addr add 10.0.1.2/24 dev vs1
      ip -n "$n" addr add 10.0.2.1/24 dev vr0; ip -n "$r" addr add 10.0.2.2/24 dev vr1
      for x in "$n vs0" "$n vr0" "$s vs1" "$r vr1" "$s lo" "$r lo"; do set -- $x; ip -n "$1" link set "$2" up; done
      ip -n "$s" route add default via 10.0.1.1; ip -n "$r" route add default via 10.0.2.1
      ip netns exec "$r" nft -f - <<'NFT'
table netdev bench {
  counter copies {}
  chain in { type filter hook ingress device "vr1" priority 0; meta protocol ip ip protocol udp counter name copies drop; }
}
NFT
      # resolve the receivers' neighbour entry (the ping itself is dropped)
      ip netns exec "$n" ping -c1 -W1 10.0.2.2 >/dev/null 2>&1 || true ;;
    *) echo "unknown topology $t"; exit 1 ;;
    esac
    serve "$k" "$m"
  done
done

run() { # topo mode fan round
  local t=$1 m=$2 f=$3 r=$4 k=$2 extra="" dm=$2 drv
  k=$t-$m
  drv=(ip netns exec "${ns[$k]}")
  if [ "${rns[$k]}" ]; then
    drv=(ip netns exec "${sns[$k]}")
    local rs="" p
    for p in $(seq 20000 $((20000 + f - 1))); do rs+="${rs:+,}10.0.2.2:$p"; done
    extra="-receivers $rs"
  fi
  # distribute keeps the stream of the previous run: remove it first (the
  # API answers 404 the first time).
  if [ "$m" != udpfwd ]; then
    dm=distribute
    ip netns exec "${ns[$k]}" curl -s -o /dev/null -H 'Authorization: Bearer bench' \
      -d '{"op":"remove_stream","dst":"'"${addr[$k]}"':5004"}' "http://${addr[$k]}:8095/v1/distribute" || true
    extra+=" -api http://${addr[$k]}:8095 -token bench"
  else
    # udpfwd keeps its members: restart it for a clean room.
    kill "${spid[$k]}"; wait "${spid[$k]}" 2>/dev/null || true
    serve "$k" "$m"
    if [ "${rns[$k]}" ]; then # the receivers join room 0 from 10.0.2.2 (egress: sent from the server's namespace)
      local hns=${rns[$k]}; [ "$hns" = egress ] && hns=${ns[$k]}
      ip netns exec "$hns" python3 -c 'import socket, sys
for p in range(20000, 20000 + int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
    s.bind(("10.0.2.2", p)); s.sendto(b"\0\0", ("10.0.1.1", 5004)); s.close()' "$f"
    fi
  fi
  local pp=""
  if [ "${PERF:-}" ]; then # after distload's warm-up, for most of the measurement
    mkdir -p "$PERF"
    (sleep 1.5; perf record -a -g -F 1999 -o "$PERF/$t-$m-$f-$r.data" -- sleep $((secs > 3 ? secs - 2 : 1)) >/dev/null 2>&1) &
    pp=$!
  fi
  if [ "${rns[$k]}" ]; then
    local cnt="ip netns exec ${rns[$k]} nft list counter netdev bench copies | awk '/packets/ {print \$2}'"
    [ "${rns[$k]}" = egress ] && cnt="ip netns exec ${ns[$k]} tc -s qdisc show dev vr0 | awk '/dropped/ {sub(\",\", \"\", \$7); print \$7}'"
    "${drv[@]}" "$work/distload" -mode "$dm" -target "${addr[$k]}:5004" $extra -server-pid "${spid[$k]}" \
      -count "$cnt" \
      -pps "$pps" -duration "${secs}s" >"$work/out"
  else
    "${drv[@]}" "$work/distload" -mode "$dm" -target "${addr[$k]}:5004" $extra -server-pid "${spid[$k]}" \
      -fan "$f" -pps "$pps" -duration "${secs}s" >"$work/out"
  fi
  [ -z "$pp" ] || wait "$pp" || true
  cat "$work/out" >>"$work/raw"
  python3 - "$t" "$m" "$f" "$r" "$work/out" <<'PY' | tee -a "$work/results"
import json, sys
t, m, f, r, path = sys.argv[1:]
d = json.load(open(path))
print(f"{t} {m} {f} {r} {d.get('server_us_per_copy', 0):.3f} {d.get('whole_us_per_copy', 0):.3f} {d['delivered']} {d['expected']} {d.get('server_and_softirq_us_per_copy', 0):.3f} {d.get('single_count_us_per_copy', 0):.3f}")
PY
}

echo "# topo mode fan round server_us/copy whole_us/copy delivered expected server+softirq_us/copy single_us/copy   ($pps pkt/s, ${secs}s, 200-byte RTP)"
for r in $(seq "$rounds"); do
  for f in "${fans[@]}"; do
    k=${#modes[@]}
    for t in "${topos[@]}"; do
      for i in $(seq 0 $((k-1))); do run "$t" "${modes[$(( (i + r - 1) % k ))]}" "$f" "$r"; done
    done
  done
done
echo "# medians (us of CPU per delivered copy): server process; server + softirq + ksoftirqd; whole machine (+ the driver's sender and receivers);"
echo "# single: whole with each tick counted once (server + driver + ksoftirqd, no /proc/stat softirq, which tick accounting also adds to the task it interrupted)"
python3 - "$work/results" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for l in open(sys.argv[1]):
    t, m, f, r, s, w, d, e, q, g = l.split()
    rows[(t, m, int(f))].append((float(s), float(w), 1 - int(d) / max(int(e), 1), float(q), float(g)))
for (t, m, f), v in sorted(rows.items(), key=lambda x: (["egress", "veth", "lo"].index(x[0][0]), x[0][2], x[0][1])):
    print(f"{t:4s} {m:10s} 1->{f:<3d} server {statistics.median(x[0] for x in v):7.3f}  server+softirq {statistics.median(x[3] for x in v):7.3f}  whole {statistics.median(x[1] for x in v):7.3f}  single {statistics.median(x[4] for x in v):7.3f}  loss {max(x[2] for x in v):.4f}")
for (t, f) in sorted({(t, f) for t, m, f in rows}, key=lambda x: (["egress", "veth", "lo"].index(x[0]), x[1])):
    if (t, "ebpf", f) in rows and (t, "userspace", f) in rows:
        k, u = rows[(t, "ebpf", f)], rows[(t, "userspace", f)]
        print(f"{t:4s} 1->{f:<3d} kernel path cheaper than user space: whole {statistics.median(x[1] for x in u) / statistics.median(x[1] for x in k):.2f}x, single {statistics.median(x[4] for x in u) / statistics.median(x[4] for x in k):.2f}x")
PY
