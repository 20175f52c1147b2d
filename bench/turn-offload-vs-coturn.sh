#!/usr/bin/env bash
# TURN relay with the kernel fast path: coturn's turnserver, traverse turn in
# user space and traverse turn --offload ebpf, each in a network namespace of
# its own (lo only; nothing is attached to the root namespace), driven by the
# same coturn turnutils_uclient load against a turnutils_peer echo in that
# namespace, one after the other, ROUNDS times with the order rotating.
#
# With the kernel path the server's own CPU drops to near zero, because on
# loopback the relaying work runs in the senders' system calls (uclient,
# turnutils_peer) and in softirq context. So besides the server process's
# CPU (utime+stime, /proc/PID/stat), it reports the WHOLE cost of the run:
# server + uclient (bash `time`) + turnutils_peer + softirq time (/proc/stat,
# all CPUs) + the ksoftirqd threads, per relayed packet. The whole-machine
# figure includes the load generator's cost, the same for every server, and
# softirq time of anything else running on the machine: it is the
# conservative one.
#
# Usage: sudo bench/turn-offload-vs-coturn.sh [CLIENTS] [MSGS] [INTERVAL_MS] [LEN]
#   defaults: 20 clients, 1000 messages each, 5 ms apart, 172 bytes.
#   ROUNDS=N (default 3); MODES="coturn traverse ebpf" picks the servers;
#   BASELINE=/path/to/traverse adds mode "baseline": another traverse binary
#   in user space (A/B of a change), e.g. MODES="coturn traverse baseline".
# Run it under the shared lock: flock /tmp/traverse-bench.lock bench/...
# Each delivered message is relayed twice (to the peer and back), so relayed
# packets = sent + received.
set -euo pipefail
clients=${1:-20}; msgs=${2:-1000}; interval=${3:-5}; len=${4:-172}
rounds=${ROUNDS:-3}; modes=(${MODES:-coturn traverse ebpf})
cd "$(dirname "$0")/.."
. bench/lib/coturn.sh
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces, eBPF)"; exit 1; }
for b in turnserver turnutils_uclient turnutils_peer ip ss; do
  command -v $b >/dev/null || { echo "missing $b (apt-get install coturn iproute2)"; exit 1; }
done
. bench/lib/cleanup.sh

hz=$(getconf CLK_TCK)
proc_cpu() { awk '{print $14+$15}' /proc/$1/stat; }            # ticks
softirq() { awk '/^cpu / {print $8}' /proc/stat; }              # ticks, all CPUs
ksoftirqd() { local s=0 p; for p in $(pgrep '^ksoftirqd/'); do s=$((s + $(proc_cpu "$p"))); done; echo $s; }

go build -o "$work/traverse" ./cmd/traverse

port=3478; pport=3480
declare -A spid ppid ns lastrel lastker
for m in "${modes[@]}"; do
  n=trv-turnbench-$m-$$; ip netns add "$n"; nss+=("$n"); ns[$m]=$n
  ip -n "$n" link set lo up
  ip netns exec "$n" turnutils_peer -L 127.0.0.1 -p $pport >/dev/null 2>&1 & ppid[$m]=$!; pids+=($!)
  case $m in
  coturn)
    coturn_relay_conf "$work" "$port"
    ip netns exec "$n" turnserver -c "$work/coturn.conf" >/dev/null 2>&1 & spid[$m]=$!; pids+=($!) ;;
  traverse|ebpf|baseline)
    extra=""; [ $m = ebpf ] && extra="--offload ebpf"
    bin=$work/traverse; [ $m = baseline ] && bin=${BASELINE:?BASELINE=/path/to/traverse for mode baseline}
    ip netns exec "$n" "$bin" turn --listen 127.0.0.1:$port --realm bench --user bench:bench \
      --allow-loopback-peers --relay-ports 53000-53999 --log-level warn --admin 127.0.0.1:9464 $extra 2>"$work/$m.log" & spid[$m]=$!; pids+=($!) ;;
  *) echo "unknown mode $m"; exit 1 ;;
  esac
done
for m in "${modes[@]}"; do
  for p in $port $pport; do
    for i in $(seq 100); do ip netns exec "${ns[$m]}" ss -Hlnu "sport = :$p" | grep -q . && break; sleep 0.05; done
  done
  kill -0 "${spid[$m]}" 2>/dev/null || { echo "$m did not start:"; cat "$work/$m.log" 2>/dev/null; exit 1; }
done

TIMEFORMAT='%U %S'
# relayed and kernel-relayed packets so far (traverse only), from its metrics
counts() {
  ip netns exec "${ns[$1]}" curl -s http://127.0.0.1:9464/metrics | awk '
    /^traverse_turn_relayed_packets_total/ {r += $2} /^traverse_turn_offload_packets_total/ {k += $2} END {printf "%d %d", r, k}'
}
run() { # mode round
  local m=$1 r=$2 s0 p0 q0 k0 s1 p1 q1 k1 out ut sent recv lost
  s0=$(proc_cpu "${spid[$m]}"); p0=$(proc_cpu "${ppid[$m]}"); q0=$(softirq); k0=$(ksoftirqd)
  { time ip netns exec "${ns[$m]}" turnutils_uclient -u bench -w bench -p $port -m "$clients" -n "$msgs" -z "$interval" \
      -l "$len" -e 127.0.0.1 -r $pport 127.0.0.1 >"$work/out" 2>&1 ; } 2>"$work/time"
  s1=$(proc_cpu "${spid[$m]}"); p1=$(proc_cpu "${ppid[$m]}"); q1=$(softirq); k1=$(ksoftirqd)
  if [ "$m" != coturn ]; then
    sleep 1.2 # the kernel counters are read into the metrics every second
    read -r rel ker <<<"$(counts "$m")"
    echo "  $m: server relayed $((rel - ${lastrel[$m]:-0})) packets, $((ker - ${lastker[$m]:-0})) of them in the kernel"
    lastrel[$m]=$rel; lastker[$m]=$ker
  fi
  out=$(cat "$work/out"); ut=$(awk '{print $1+$2}' "$work/time")
  sent=$(grep -o 'tot_send_msgs=[0-9]*, tot_recv_msgs=[0-9]*' <<<"$out" | tail -1 | grep -o '[0-9]*' | head -1)
  recv=$(grep -o 'tot_send_msgs=[0-9]*, tot_recv_msgs=[0-9]*' <<<"$out" | tail -1 | grep -o '[0-9]*' | tail -1)
  lost=$(grep -o 'Total lost packets [0-9]*' <<<"$out" | grep -o '[0-9]*$')
  awk -v m="$m" -v r="$r" -v hz="$hz" -v s="$((s1-s0))" -v p="$((p1-p0))" -v q="$((q1-q0))" -v k="$((k1-k0))" -v u="$ut" \
      -v sent="$sent" -v recv="$recv" -v lost="$lost" 'BEGIN {
    srv = s/hz; peer = p/hz; sirq = q/hz; kd = k/hz; whole = srv + peer + sirq + kd + u; pk = sent + recv;
    printf "round %d %-8s sent %6d recv %6d lost %5d | cpu-s server %5.2f uclient %5.2f peer %5.2f softirq %5.2f ksoftirqd %4.2f | us/pkt server %6.2f whole %6.2f\n",
      r, m, sent, recv, lost, srv, u, peer, sirq, kd, 1e6*srv/pk, 1e6*whole/pk
    printf "%s %d %.4f %.4f %d\n", m, r, 1e6*srv/pk, 1e6*whole/pk, lost >> "'"$work/results"'" }'
}

echo "load: $clients clients x $msgs messages of $len bytes, ${interval} ms apart (turnutils_uclient, UDP, channels); $rounds rounds"
for r in $(seq "$rounds"); do
  k=${#modes[@]}
  for i in $(seq 0 $((k-1))); do run "${modes[$(( (i + r - 1) % k ))]}" "$r"; done
done

echo "medians over $rounds rounds (us of CPU per relayed packet; ratio = coturn's cost / this one's, i.e. packets per CPU-second relative to coturn, paired per round):"
awk '
  { srv[$1,$2]=$3; whole[$1,$2]=$4; lost[$1]+=$5; seen[$1]=1; if ($2>R) R=$2 }
  function median(a, n,   i, j, t) { for (i=1;i<=n;i++) for (j=i+1;j<=n;j++) if (a[j]<a[i]) { t=a[i]; a[i]=a[j]; a[j]=t }
    return n%2 ? a[(n+1)/2] : (a[n/2]+a[n/2+1])/2 }
  END {
    for (m in seen) {
      n=0; delete s; delete w; delete rs; delete rw; nr=0
      for (r=1;r<=R;r++) { if ((m,r) in srv) { n++; s[n]=srv[m,r]; w[n]=whole[m,r]
        if (("coturn",r) in srv) { nr++; rs[nr]=srv["coturn",r]/srv[m,r]; rw[nr]=whole["coturn",r]/whole[m,r] } } }
      line = sprintf("%-8s server %6.2f  whole %6.2f  lost %d", m, median(s,n), median(w,n), lost[m])
      if (nr > 0 && m != "coturn") line = line sprintf("  | ratio server %.2fx  whole %.2fx", median(rs,nr), median(rw,nr))
      print line
    }
  }' "$work/results" | sort
