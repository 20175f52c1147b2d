#!/usr/bin/env bash
# A/B of TURN relay builds by the server's own counters: for each argument
# (a traverse binary, or "coturn" for coturn's turnserver) in turn, start
# that server, run one turnutils_uclient load through it under
# `perf stat -p SERVER`, and print the server's task clock and context
# switches per relayed packet (voluntary and involuntary from
# /proc/PID/task/*/status). Finer than bench/turn-vs-coturn.sh's 10 ms
# ticks, and alternating builds in one call spreads the machine's other
# load over all of them. Needs perf and coturn (apt-get install coturn).
#
# Usage: bench/turn-perfstat.sh BIN|coturn [BIN|coturn...]
#   e.g. bench/turn-perfstat.sh /tmp/a /tmp/b /tmp/a /tmp/b coturn
#   CLIENTS (20), MSGS (1000), INTERVAL_MS (5), LEN (172): the load;
#   UCLIENT_FLAGS="-t" for TCP clients; TRAVERSE_FLAGS adds flags to
#   traverse turn; EVENTS adds perf events, e.g.
#   EVENTS=raw_syscalls:sys_enter,syscalls:sys_enter_recvmmsg (each printed
#   as a count per run).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib/coturn.sh
for b in perf turnserver turnutils_uclient turnutils_peer; do
  command -v $b >/dev/null || { echo "missing $b"; exit 1; }
done
[ $# -gt 0 ] || { echo "usage: $0 BIN|coturn [BIN|coturn...]"; exit 2; }
clients=${CLIENTS:-20}; msgs=${MSGS:-1000}; interval=${INTERVAL_MS:-5}; len=${LEN:-172}
. bench/lib/cleanup.sh
free_port() { local p=$1; while ss -Hlnu "sport = :$p" | grep -q . || ss -Hlnt "sport = :$p" | grep -q .; do p=$((p+1)); done; echo $p; }
wait_port() { for _ in $(seq 100); do ss -Hlnu "sport = :$1" | grep -q . && return 0; sleep 0.05; done; echo "port $1 never opened"; exit 1; }
pport=$(free_port 45478)
turnutils_peer -L 127.0.0.1 -p "$pport" >/dev/null 2>&1 & pids+=($!)
wait_port "$pport"

echo "load: $clients clients x $msgs messages of $len bytes, ${interval} ms apart (turnutils_uclient ${UCLIENT_FLAGS:-UDP})"
for bin in "$@"; do
  port=$(free_port $((pport+1)))
  if [ "$bin" = coturn ]; then
    coturn_relay_conf "$work" "$port"
    turnserver -c "$work/coturn.conf" >/dev/null 2>&1 & spid=$!
  else
    "$bin" turn --listen 127.0.0.1:$port --realm bench --user bench:bench --allow-loopback-peers \
      --relay-ports 53000-53999 --log-level warn ${TRAVERSE_FLAGS:-} 2>"$work/traverse.log" & spid=$!
  fi
  pids+=($spid)
  wait_port "$port"
  perf stat -x, -e "task-clock,context-switches${EVENTS:+,$EVENTS}" -p "$spid" -o "$work/perf.txt" & perfpid=$!
  sleep 0.2 # perf attached
  out=$(turnutils_uclient ${UCLIENT_FLAGS:-} -u bench -w bench -p "$port" -m "$clients" -n "$msgs" -z "$interval" -l "$len" \
        -e 127.0.0.1 -r "$pport" 127.0.0.1 2>&1)
  kill -INT $perfpid; wait $perfpid || true
  sw=$(cat /proc/$spid/task/*/status | awk '/^voluntary_ctxt/ {v+=$2} /^nonvoluntary_ctxt/ {n+=$2} END {print v+0, n+0}')
  kill $spid; wait $spid 2>/dev/null || true
  sent=$(grep -o 'tot_send_msgs=[0-9]*, tot_recv_msgs=[0-9]*' <<<"$out" | tail -1 | grep -o '[0-9]*' | head -1)
  recv=$(grep -o 'tot_send_msgs=[0-9]*, tot_recv_msgs=[0-9]*' <<<"$out" | tail -1 | grep -o '[0-9]*' | tail -1)
  awk -F, -v name="$(basename "$bin")" -v pk=$((${sent:-0}+${recv:-0})) -v sw="$sw" '
    /task-clock/ {tc=$1} /context-switches/ {cs=$1}
    $3 ~ /:/ {sub(/^syscalls:sys_enter_/, "", $3); ex = ex sprintf("  %s %d", $3, $1)}
    END {split(sw, s, " "); if (pk == 0) pk = 1;
      printf "%-10s %6d relayed  %6.1f ms  %6.2f us/relayed packet  switches %.3f/packet (voluntary %d, involuntary %d)%s\n",
        name, pk, tc, 1000*tc/pk, cs/pk, s[1], s[2], ex}' "$work/perf.txt"
done
